"""A real, throwaway PostgreSQL server for the tests, and fresh databases on it.

``PostgresServer`` owns the server's whole life: it finds Debian's binaries under
``/usr/lib/postgresql/<version>/bin`` (the newest version), runs ``initdb`` into a
``tempfile.mkdtemp()`` directory, starts the server with ``pg_ctl`` listening only on
127.0.0.1 on a free port (its unix socket inside the temp dir, durability turned off for
speed), and ``stop()`` shuts it down and removes the directory. As root the server runs as the
``postgres`` user (through ``runuser``), since PostgreSQL refuses to run as root; otherwise as
the current user. ``create_database()`` makes a uniquely named database and returns its
SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:<port>/<name>``);
``drop_database()`` removes it, closing any connection left on it.

Missing binaries or a server that does not start raise ``PostgresUnavailable`` with the reason
(and the server log's last lines); the fixtures in ``conftest.py`` turn that into a test
failure, never a skip. ``make test`` installs Debian's ``postgresql`` package when it is
missing.

Set ``NEWSLETTER_TEST_POSTGRES`` to an existing server's base URL (for example
``postgresql://postgres@127.0.0.1:5432/postgres``; the ``postgresql+psycopg://`` form works
too) to use that server instead of starting one. Its user must be allowed to create and drop
databases; the database in the URL (``postgres`` when none is given) is the one connected to
for that. Every database a test creates there is dropped after the test.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL, make_url

ENV_VAR = "NEWSLETTER_TEST_POSTGRES"
BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"
INSTALL_HINT = "install Debian's postgresql package (`make test` does it)"
STARTUP_TIMEOUT = 60  # seconds, for pg_ctl -w
LOG_TAIL_LINES = 30

# Written into postgresql.conf after initdb. Durability off: the data is thrown away anyway.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be had; the message says why and how to fix it."""


def find_bin_dir() -> Path:
    """The ``bin`` directory of the newest PostgreSQL under /usr/lib/postgresql that has
    ``initdb`` and ``pg_ctl``."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for path in Path("/").glob(BIN_GLOB.lstrip("/")):
        version = path.parent.name
        if not re.fullmatch(r"\d+(\.\d+)*", version):
            continue
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            candidates.append((tuple(int(part) for part in version.split(".")), path))
    if not candidates:
        raise PostgresUnavailable(f"no initdb/pg_ctl found in {BIN_GLOB}: {INSTALL_HINT}")
    return max(candidates)[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """A PostgreSQL server for the tests: a throwaway one started here, or the existing one
    named by ``$NEWSLETTER_TEST_POSTGRES``. Use ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, external_url: str | None = None) -> None:
        if external_url is None:
            external_url = os.environ.get(ENV_VAR) or None
        self.external = external_url is not None
        self._base: URL | None = None
        if external_url is not None:
            try:
                url = make_url(external_url)
            except Exception as e:
                raise PostgresUnavailable(f"${ENV_VAR} is not a database URL: {e}") from e
            if url.get_backend_name() != "postgresql":
                raise PostgresUnavailable(
                    f"${ENV_VAR} must be a postgresql:// URL, not {url.drivername}://"
                )
            self._base = url.set(drivername="postgresql+psycopg")
        self._tmp: Path | None = None
        self._bin: Path | None = None
        self._as_postgres = False
        self._running = False

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the throwaway server (or check the external one answers). Raises
        ``PostgresUnavailable`` with the reason when it cannot."""
        if self.external:
            self._check_external()
            return
        if self._running:
            return
        self._bin = find_bin_dir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, the server must run as the {SERVER_USER!r} user, which "
                    f"does not exist: {INSTALL_HINT}"
                ) from None
        self._tmp = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
        atexit.register(self.stop)
        try:
            self._init_cluster()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self._running = True

    def stop(self) -> None:
        """Stop the throwaway server and remove its directory. Safe to call more than once;
        does nothing for an external server."""
        tmp = self._tmp
        if tmp is None:
            return
        atexit.unregister(self.stop)
        pid_file = tmp / "data" / "postmaster.pid"
        try:
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                modes = ("fast", "immediate")
                if not any(self._pg_ctl("stop", "-m", mode).returncode == 0 for mode in modes):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # never leave a server running
        finally:
            self._tmp = None
            self._running = False
            shutil.rmtree(tmp, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------------

    @property
    def base_url(self) -> URL:
        """The SQLAlchemy URL of the maintenance database (``postgres`` unless the external
        URL names another)."""
        if self._base is None:
            raise PostgresUnavailable("the PostgreSQL server is not running")
        if self._base.database is None:
            return self._base.set(database="postgres")
        return self._base

    def create_database(self, name: str | None = None) -> str:
        """Create a new database (a unique ``test_…`` name unless given) and return its
        SQLAlchemy URL, password included."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.base_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any connection still open on it first."""
        with self._admin() as conn:
            if conn.info.server_version >= 130000:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                return
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def _admin(self) -> psycopg.Connection[TupleRow]:
        """An autocommit connection to the maintenance database (CREATE/DROP DATABASE cannot
        run inside a transaction)."""
        url = self.base_url
        return psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
            connect_timeout=10,
        )

    def _check_external(self) -> None:
        try:
            with self._admin() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            shown = self.base_url.render_as_string(hide_password=True)
            raise PostgresUnavailable(
                f"cannot connect to the PostgreSQL server in ${ENV_VAR} ({shown}): {e}"
            ) from None

    # -- the throwaway server -----------------------------------------------------------------

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the ``postgres`` user when we are root."""
        assert self._tmp is not None
        command = [str(arg) for arg in args]
        if self._as_postgres:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(
            command,
            cwd=self._tmp,  # the server user may not be allowed into our working directory
            capture_output=True,
            text=True,
            check=False,
            timeout=STARTUP_TIMEOUT + 30,
        )

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None and self._tmp is not None
        return self._run(
            self._bin / "pg_ctl",
            *args,
            "-D",
            self._tmp / "data",
            "-w",
            "-t",
            str(STARTUP_TIMEOUT),
        )

    def _init_cluster(self) -> None:
        assert self._bin is not None and self._tmp is not None
        (self._tmp / "socket").mkdir()
        if self._as_postgres:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self._tmp, self._tmp / "socket"):
                os.chown(path, user.pw_uid, user.pw_gid)
        result = self._run(
            self._bin / "initdb",
            "-D",
            self._tmp / "data",
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        settings = {**SETTINGS, "unix_socket_directories": f"'{self._tmp / 'socket'}'"}
        with (self._tmp / "data" / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/_postgres.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start_server(self) -> None:
        """Start on a free port; retry on another port if that one got taken meanwhile."""
        assert self._tmp is not None
        log = self._tmp / "server.log"
        for _attempt in range(3):
            log.unlink(missing_ok=True)  # so the tail read below is this attempt's
            port = free_port()
            result = self._pg_ctl("start", "-l", str(log), "-o", f"-p {port}")
            if result.returncode == 0:
                self._base = URL.create(
                    "postgresql+psycopg", username="postgres", host="127.0.0.1", port=port
                )
                return
            if "already in use" not in self._log_tail(log):
                break
            self._pg_ctl("stop", "-m", "immediate")
        raise PostgresUnavailable(
            f"the PostgreSQL server did not start (pg_ctl exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}\n"
            f"last lines of the server log:\n{self._log_tail(log)}"
        )

    @staticmethod
    def _log_tail(log: Path) -> str:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(lines[-LOG_TAIL_LINES:])
