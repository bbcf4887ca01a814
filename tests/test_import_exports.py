"""`newsletter subscribers import` on the files other services export: each format's header is
recognized and its names stored exactly; semicolon and tab files; columns named by option;
`--status pending` sends the subscribe form's confirmation mail; `--dry-run` writes nothing.
The CLI runs as a real process on a real SQLite file; mail goes to the outbox backend.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.importing import read_rows
from tests.test_cli import newsletter
from tests.test_cli_input import assert_clean

EXPORTS = Path(__file__).parent / "data" / "exports"


def _import(config: Path, path: Path, *options: str) -> tuple[int, str, str]:
    result = newsletter("--config", str(config), "subscribers", "import", str(path), *options)
    assert_clean(result)
    return result.returncode, result.stdout, result.stderr


def _stored(config: Path) -> list[tuple[str, str, str]]:
    """(email, name, status) of every subscriber, in the order they were added."""
    with make_publisher(load_config(config)) as publisher:
        return [(s.email, s.name or "", s.status.value) for s in publisher.subscribers()]


@pytest.mark.parametrize(
    ("export", "expected"),
    [
        (
            # Mailchimp audience export: "Email Address", "First Name", "Last Name", and a
            # postal "Address" column that must not be taken for the address.
            "mailchimp.csv",
            [
                ("ada@example.com", "Ada Lovelace"),
                ("grace@example.org", "Grace"),
                ("linus@example.net", ""),
                ("jean-luc@example.fr", "Jean-Luc Picard, Jr."),
            ],
        ),
        (
            # listmonk: uuid,email,name,attributes (JSON with commas and quotes),status,...
            "listmonk.csv",
            [
                ("margaret@example.com", "Margaret Hamilton"),
                ("katherine@example.com", "Johnson, Katherine"),
                ("blocked@example.com", "Blocked Person"),
            ],
        ),
        # Substack: email,active_subscription,expiry,plan,... (no name column).
        ("substack.csv", [("reader.one@example.com", ""), ("paying.reader@example.org", "")]),
        # Buttondown: id,email_address,notes,metadata,tags,... (no name column).
        ("buttondown.csv", [("bd.first@example.com", ""), ("bd.second@example.net", "")]),
        # Ghost members: id,email,name,note,subscribed_to_emails,...
        ("ghost.csv", [("dorothy@example.com", "Dorothy Vaughan"), ("mary@example.com", "")]),
        # Excel "CSV UTF-8" in a German locale: a BOM, semicolons, CRLF, a "Vorname" column
        # beside "Name" (the full name is taken, not joined with it).
        (
            "excel-de.csv",
            [("juergen@example.de", "Jürgen Müller"), ("zoe@example.de", "Zoë Dupont, Dr.")],
        ),
        # The header in another order than `email,name`.
        ("name-email.csv", [("ada@example.com", "Ada Lovelace"), ("bare@example.com", "")]),
        # Tab-separated, name first.
        ("tabs.tsv", [("anna@example.com", "Anna Tab"), ("bob@example.com", "")]),
    ],
)
def test_each_export_format_imports_with_the_right_names(
    example_project: Path, export: str, expected: list[tuple[str, str]]
) -> None:
    code, out, err = _import(example_project, EXPORTS / export)
    assert (code, err) == (0, "")
    assert out == f"imported {len(expected)}, already present 0, rejected 0\n"
    assert _stored(example_project) == [(e, n, "active") for e, n in expected]


def test_columns_named_by_option_with_semicolons(example_project: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "liste.csv"
    csv_file.write_text(
        "Nummer;Correo;Nombre;Apellido\n1;ana@example.es;Ana;García\n2;luis@example.es;Luis;\n"
    )
    code, out, _ = _import(
        example_project, csv_file, "--email-column", "correo", "--name-column", "3"
    )
    assert code == 0 and "imported 2" in out
    assert _stored(example_project) == [
        ("ana@example.es", "Ana", "active"),
        ("luis@example.es", "Luis", "active"),
    ]


def test_a_header_without_an_address_column_is_one_clear_error(
    example_project: Path, tmp_path: Path
) -> None:
    csv_file = tmp_path / "liste.csv"
    csv_file.write_text("Correo,Name\nana@example.es,Ana\n")
    code, _, err = _import(example_project, csv_file)
    assert code == 1
    assert "header without an address column ('Correo', 'Name')" in err
    assert "--email-column" in err
    code, _, err = _import(example_project, csv_file, "--email-column", "Mail")
    assert code == 1
    assert "--email-column 'Mail': no address column of that name" in err
    assert _stored(example_project) == []


def test_row_problems_keep_their_line_numbers_in_an_export(
    example_project: Path, tmp_path: Path
) -> None:
    csv_file = tmp_path / "export.csv"
    csv_file.write_bytes(
        b'"Email Address","First Name","Last Name"\n'  # 1
        b'"ok@example.com","O","K"\n'  # 2
        b'"not-an-address","N","A"\n'  # 3
        b'"latin@example.com","L\xe9a",""\n'  # 4: not UTF-8
        b'"bell@example.com","Be\x07l",""\n'  # 5: a control character in the name
    )
    code, out, err = _import(example_project, csv_file)
    assert code == 3
    assert "imported 1, already present 0, rejected 3" in out
    assert f"{csv_file}:3: 'not-an-address': " in err
    assert f"{csv_file}:4: 'latin@example.com': not valid UTF-8 (byte 0xe9)" in err
    assert f"{csv_file}:5: 'bell@example.com': a name must not contain control" in err
    assert _stored(example_project) == [("ok@example.com", "O K", "active")]


def test_dry_run_reports_and_writes_nothing(example_project: Path, tmp_path: Path) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        publisher.add_subscriber("ada@example.com")
    database = example_project.parent / "newsletter.db"
    before = database.read_bytes()
    rows = ["Email Address,First Name,Last Name", "ada@example.com,Ada,L", "new@example.com,N,"]
    rows += [f"bad{i},B,{i}" for i in range(25)]
    csv_file = tmp_path / "export.csv"
    csv_file.write_text("\n".join(rows) + "\n")
    code, out, err = _import(example_project, csv_file, "--dry-run", "--status", "pending")
    assert code == 3
    assert out == (
        "dry run, nothing written: would import 1 as pending, already present 1, rejected 25\n"
    )
    lines = err.splitlines()
    assert lines[0].startswith(f"{csv_file}:4: 'bad0': ")
    assert lines[19].startswith(f"{csv_file}:23: 'bad19': ")
    assert lines[20:] == ["... and 5 more rejected rows"]
    assert database.read_bytes() == before
    assert _stored(example_project) == [("ada@example.com", "", "active")]
    assert not (example_project.parent / "outbox").exists()


def test_pending_import_sends_confirmations_and_changes_nobody_known(
    example_project: Path, tmp_path: Path
) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        publisher.add_subscriber("left@example.com")
        publisher.remove_subscriber("left@example.com")
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email;name\nnew.one@example.com;New One\nleft@example.com;Left\nnew.two@example.com;\n"
    )
    code, out, err = _import(example_project, csv_file, "--status", "pending")
    assert (code, err) == (0, "")
    assert out == (
        "imported 2 as pending, already present 1, rejected 0\nconfirmation mails sent: 2\n"
    )
    assert _stored(example_project) == [
        ("left@example.com", "", "unsubscribed"),
        ("new.one@example.com", "New One", "pending"),
        ("new.two@example.com", "", "pending"),
    ]
    mails = sorted((example_project.parent / "outbox" / "0").glob("*.eml"))
    assert len(mails) == 2
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in mails
    ]
    assert sorted(str(m["To"]) for m in messages) == [
        "New One <new.one@example.com>",
        "new.two@example.com",
    ]
    for message in messages:
        text = message.get_body(("plain",))
        assert text is not None
        assert "https://news.example.org/confirm/" in text.get_content()
    # Imported again: nobody is pending anew, so no second confirmation goes out.
    code, out, _ = _import(example_project, csv_file, "--status", "pending")
    assert code == 0
    assert out == "imported 0 as pending, already present 3, rejected 0\n"
    assert len(list((example_project.parent / "outbox" / "0").glob("*.eml"))) == 2


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        # One column, no header: nothing to sniff, read as commas.
        ("ada@example.com\nbob@example.com\n", {}, [(1, "ada@example.com", None)]),
        # Semicolons in a comma file's names, commas in a semicolon file's names.
        (
            "email,name\nada@example.com,Ada; I\nb@example.com,B\n",
            {},
            [(2, "ada@example.com", "Ada; I")],
        ),
        (
            "email;name\nada@example.com;Lovelace, Ada\nb@x.com;B\n",
            {},
            [(2, "ada@example.com", "Lovelace, Ada")],
        ),
        # Only the delimiter is sniffed: single quotes stay part of a name.
        (
            "email,name\nada@example.com,'Ada'\nb@example.com,O'B\n",
            {},
            [(2, "ada@example.com", "'Ada'")],
        ),
        # A position for the address, and the header still recognized and skipped.
        (
            "x,email,name\n1,ada@example.com,Ada\n",
            {"email_column": "2"},
            [(2, "ada@example.com", "Ada")],
        ),
        # A position with no header: the rows as they are.
        (
            "Ada;ada@example.com\n",
            {"email_column": "2", "name_column": "1"},
            [(1, "ada@example.com", "Ada")],
        ),
    ],
)
def test_reading_rows(
    tmp_path: Path, text: str, options: dict[str, str], expected: list[tuple[int, str, str | None]]
) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(text)
    rows = [(r.line, r.email, r.name) for r in read_rows(csv_file, **options)]
    assert rows[: len(expected)] == expected
    assert all(r.problem is None for r in read_rows(csv_file, **options))
