"""Config values that would break something far from the config: each one is refused at load with
the one-line ``FILE:LINE: key: reason`` error, never a traceback later."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.exceptions import ConfigError

from .test_config import MINIMAL

SMTP = '\n[mail]\nbackend = "smtp"\n\n[mail.smtp]\nhost = "127.0.0.1"\n'


def refused(tmp_path: Path, extra: str, key: str) -> str:
    """Load MINIMAL + ``extra``; return the error's text after the ``FILE:LINE: key: `` prefix,
    checking the prefix names the line of ``key``'s last part in ``extra``."""
    text = MINIMAL + extra
    config = tmp_path / "newsletter.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    name = key.rsplit(".", 1)[-1]
    line = next(
        n for n, row in enumerate(text.splitlines(), 1) if row.split("=")[0].strip() == name
    )
    prefix = f"{config.resolve()}:{line}: {key}: "
    message = str(info.value)
    assert message.startswith(prefix), message
    assert "\n" not in message
    return message[len(prefix) :]


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        # non-finite numbers: TOML has nan and inf, and nan compares false with any minimum
        ("\n[digest]\nlookback_hours = inf\n", "digest.lookback_hours", "finite number, got inf"),
        ("\n[digest]\nlookback_hours = nan\n", "digest.lookback_hours", "finite number, got nan"),
        ("\n[http]\ntimeout = nan\n", "http.timeout", "expected a finite number, got nan"),
        ("\n[feeds]\nttl_minutes = -inf\n", "feeds.ttl_minutes", "expected a whole number"),
        (
            "\n[schedule]\nlease_seconds = -inf\n",
            "schedule.lease_seconds",
            "finite number, got -inf",
        ),
        (
            '\n[[sources]]\nname = "s"\nkind = "feed"\nurl = "http://x/"\ntimeout = nan\n',
            "sources[0].timeout",
            "expected a finite number, got nan",
        ),
        (SMTP + "timeout = inf\n", "mail.smtp.timeout", "expected a finite number, got inf"),
        ("\n[mail]\nrate_limit = nan\n", "mail.rate_limit", "expected a finite number, got nan"),
        ("\n[web]\nconfirm_hours = nan\n", "web.confirm_hours", "finite number, got nan"),
        # out of range: each would overflow a timedelta, a SQL integer or a socket
        (
            "\n[digest]\nlookback_hours = 1e10\n",
            "digest.lookback_hours",
            "must be at most 1000000, got 10000000000.0",
        ),
        (
            f"\n[digest]\nmax_items = {2**63}\n",
            "digest.max_items",
            f"must be at most 1000, got {2**63}",
        ),
        (
            "\n[feeds]\nmax_items = 100000000000\n",
            "feeds.max_items",
            "must be at most 10000, got 100000000000",
        ),
        (
            "\n[schedule]\ngather_interval_minutes = 99999999999\n",
            "schedule.gather_interval_minutes",
            "must be at most 10080, got 99999999999",
        ),
        (
            "\n[schedule]\nmisfire_grace_seconds = 10000000000\n",
            "schedule.misfire_grace_seconds",
            "must be at most 604800",
        ),
        (
            "\n[schedule]\nstop_timeout_seconds = 1e300\n",
            "schedule.stop_timeout_seconds",
            "must be at most 86400",
        ),
        (
            '\n[[sources]]\nname = "s"\nkind = "feed"\nurl = "http://x/"\nmax_bytes = 1e3\n',
            "sources[0].max_bytes",
            "expected a whole number, got float 1000.0",
        ),
        (
            f'\n[[sources]]\nname = "s"\nkind = "feed"\nurl = "http://x/"\nmax_bytes = {2**40}\n',
            "sources[0].max_bytes",
            "must be at most 1073741824",
        ),
        ("\n[mail]\nconcurrency = 100000\n", "mail.concurrency", "must be at most 256"),
        (SMTP + "max_retries = 1000000\n", "mail.smtp.max_retries", "must be at most 100"),
        (
            "\n[web]\nsubscribe_rate_per_minute = 1e300\n",
            "web.subscribe_rate_per_minute",
            "at most",
        ),
        # ports
        (SMTP + "port = 99999\n", "mail.smtp.port", "must be at most 65535, got 99999"),
        (SMTP + "port = 0\n", "mail.smtp.port", "must be at least 1, got 0"),
        ("\n[web]\nport = 70000\n", "web.port", "must be at most 65535, got 70000"),
        ("\n[web]\nport = -1\n", "web.port", "must be at least 0, got -1"),
    ],
)
def test_numbers_out_of_range(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    assert reason in refused(tmp_path, extra, key)


def test_every_range_is_met_at_its_bounds(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(
        MINIMAL + SMTP + "port = 65535\n"
        "\n[digest]\nlookback_hours = 1000000\nmax_items = 1000\n"
        "\n[schedule]\ngather_interval_minutes = 10080\n"
        "\n[web]\nport = 0\n"
    )
    loaded = load_config(config)
    assert loaded.mail.provider("smtp").port == 65535 and loaded.web.port == 0
    assert loaded.digest.lookback_hours == 1_000_000 and loaded.digest.max_items == 1000
    assert loaded.schedule.gather_interval_minutes == 10080


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        # A CR/LF in the sender silently became another address before.
        ("sender", r"T <t@example.com>\r\nBcc: spy@example.net", r"'\r'"),
        ("sender", r"T\n <t@example.com>", r"'\n'"),
        ("reply_to", r"r@example.com\nBcc: spy@example.net", r"'\n'"),
        ("title", r"Weekly\u0000", r"'\x00'"),
        ("title", r"Weekly\u001b[2J", r"'\x1b'"),
        ("sender", r"T\u0085 <t@example.com>", r"'\x85'"),
    ],
)
def test_header_values_refuse_control_characters(
    tmp_path: Path, key: str, value: str, found: str
) -> None:
    text = "\n".join(
        line for line in MINIMAL.splitlines() if not line.startswith(f"{key} =")
    ).replace("[newsletter]", f'[newsletter]\n{key} = "{value}"')
    config = tmp_path / "newsletter.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config.resolve()}:2: newsletter.{key}: must not contain control characters, "
        f"found {found}"
    )


def test_output_dir_naming_a_file(tmp_path: Path) -> None:
    (tmp_path / "site").write_text("not a folder")
    reason = refused(tmp_path, '\n[feeds]\noutput_dir = "site"\n', "feeds.output_dir")
    assert reason == f"expected a directory, but {tmp_path / 'site'} is a file"


def test_outbox_dir_naming_a_file(tmp_path: Path) -> None:
    (tmp_path / "mailbox").write_text("")
    reason = refused(
        tmp_path, '\n[mail.outbox]\noutbox_dir = "mailbox"\n', "mail.outbox.outbox_dir"
    )
    assert reason == f"expected a directory, but {tmp_path / 'mailbox'} is a file"


@pytest.mark.parametrize(
    ("extra", "holds"),
    [
        # "." is the config's folder: /feeds/ would serve the database, the config and keys.
        ('\n[feeds]\noutput_dir = "."\n', "the database"),
        ('\n[feeds]\noutput_dir = ".."\n', "the database"),
        ('\n[feeds]\noutput_dir = "data"\n\n[storage]\npath = "data/n.db"\n', "the database"),
        (
            '\n[feeds]\noutput_dir = "."\n\n[storage]\nurl = "postgresql://h/db"\n',
            "the config file",
        ),
    ],
)
def test_output_dir_holding_the_database_or_the_config(
    tmp_path: Path, extra: str, holds: str
) -> None:
    reason = refused(tmp_path, extra, "feeds.output_dir")
    assert f"holds {holds} (" in reason
    assert "which `newsletter serve` would publish" in reason


def test_output_dir_beside_the_database_is_fine(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(MINIMAL + '\n[feeds]\noutput_dir = "public"\n')
    assert load_config(config).feeds.output_dir == tmp_path / "public"
