"""The PostgreSQL test fixtures themselves: a real server answers, and every test gets a
database of its own, empty, that is dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from tests._postgres import PostgresServer


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def existing_databases(server: PostgresServer, names: list[str]) -> list[str]:
    engine = create_engine(server.base_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"),
                {"names": names},
            ).all()
    finally:
        engine.dispose()
    return sorted(row[0] for row in rows)


def public_tables(conn: Connection) -> list[str]:
    rows = conn.execute(
        text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    ).all()
    return sorted(row[0] for row in rows)


def test_url_is_a_psycopg_url_on_loopback(postgres_url: str) -> None:
    url = make_url(postgres_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.username == "postgres"
    assert url.database is not None and url.database.startswith("test_")


def test_real_postgresql_stores_and_reads_back_a_row(engine: Engine) -> None:
    with engine.begin() as conn:
        version = conn.execute(text("SELECT version()")).scalar_one()
        assert public_tables(conn) == []
        conn.execute(
            text("CREATE TABLE article (id serial PRIMARY KEY, title text NOT NULL, tags jsonb)")
        )
        conn.execute(
            text("INSERT INTO article (title, tags) VALUES (:title, CAST(:tags AS jsonb))"),
            {"title": "Grüße — naïve café ☕", "tags": '["a", "b"]'},
        )
    assert "PostgreSQL" in version

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, title, tags FROM article")).all()
        encoding = conn.execute(text("SHOW server_encoding")).scalar_one()
    assert [tuple(row) for row in rows] == [(1, "Grüße — naïve café ☕", ["a", "b"])]
    assert encoding == "UTF8"


def test_two_databases_are_distinct_and_dropped(postgres_server: PostgresServer) -> None:
    urls = [postgres_server.create_database(), postgres_server.create_database()]
    names = [make_url(url).database or "" for url in urls]
    engines = [create_engine(url) for url in urls]
    try:
        assert names[0] != names[1]
        assert existing_databases(postgres_server, names) == sorted(names)
        with engines[0].begin() as conn:
            conn.execute(text("CREATE TABLE only_in_first (x int)"))
        with engines[1].connect() as conn:
            current = conn.execute(text("SELECT current_database()")).scalar_one()
            tables = public_tables(conn)
        assert current == names[1]
        assert tables == []

        # A connection left open on a database does not stop it being dropped.
        held = engines[0].connect()
        held.execute(text("SELECT 1"))
        postgres_server.drop_database(names[0])
        held.invalidate()
        held.close()
        assert existing_databases(postgres_server, names) == [names[1]]
    finally:
        for engine in engines:
            engine.dispose()
        postgres_server.drop_database(names[1])
    assert existing_databases(postgres_server, names) == []


# Names of the databases postgres_url gave the two runs below, in order.
fixture_databases: list[str] = []


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_its_own_database(
    run: str, postgres_url: str, engine: Engine, postgres_server: PostgresServer
) -> None:
    name = make_url(postgres_url).database or ""
    with engine.begin() as conn:
        assert conn.execute(text("SELECT current_database()")).scalar_one() == name
        assert public_tables(conn) == []  # the first run's table is not here
        conn.execute(text("CREATE TABLE marker (run text)"))
    assert name not in fixture_databases
    if fixture_databases:  # the first run's database was dropped after it
        assert existing_databases(postgres_server, fixture_databases) == []
    assert existing_databases(postgres_server, [name]) == [name]
    fixture_databases.append(name)
