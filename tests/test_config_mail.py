"""``[mail]`` and each backend's own table ``[mail.<backend>]``, in the current layout and in the
deprecated flat one (the backend's keys right in ``[mail]``, webhook keys in ``[web]``).

Both layouts must load to the same settings; the flat one logs a warning whose printed table,
pasted into the file, is the current layout (checked by pasting it). Each backend's table is
parsed by the backend's own ``Settings`` class, found through the registry.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from newsletter.config import Config, Table, load_config
from newsletter.exceptions import ConfigError
from newsletter.mail import BACKENDS, backend_class, make_backend
from newsletter.mail.base import BackendSettings, Batch, MailBackend, PreparedContent, sent_result
from newsletter.mail.mailgun import MailgunSettings
from newsletter.mail.postmark import PostmarkSettings
from newsletter.mail.smtp import SMTPSettings
from newsletter.types import DeliveryResult

from .test_cli import newsletter
from .test_config import MINIMAL

# One backend's own keys per backend (besides the common ones), as a user would write them.
OWN_KEYS: dict[str, str] = {
    "outbox": 'outbox_dir = "mail-out"\n',
    "postmark": (
        'token_env = "PM_TOKEN"\nmessage_stream = "news"\ntimeout = 12\n'
        'base_url = "http://127.0.0.1:9/"\n'
    ),
    "sendgrid": 'token_env = "SG_TOKEN"\nmax_retries = 2\n',
    "mailgun": 'token_env = "MG_TOKEN"\ndomain = "mg.example.org"\nregion = "eu"\n',
    "resend": 'token_env = "RS_TOKEN"\n',
    "smtp": (
        'host = "mail.example.org"\nport = 2525\nsecurity = "tls"\nusername = "editor"\n'
        'password_env = "SMTP_PASSWORD"\n'
    ),
}


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "newsletter.toml"
    path.write_text(MINIMAL + text)
    return load_config(path)


def tables(backend: str, common: str = "batch_size = 7\n") -> str:
    return f'\n[mail]\nbackend = "{backend}"\n{common}\n[mail.{backend}]\n{OWN_KEYS[backend]}'


def flat(backend: str, common: str = "batch_size = 7\n") -> str:
    return f'\n[mail]\nbackend = "{backend}"\n{common}{OWN_KEYS[backend]}'


def pasted_form(message: str) -> str:
    """The table a deprecation message prints (everything after its first line)."""
    return message.split("\n", 1)[1] + "\n"


@pytest.mark.parametrize("backend", sorted(OWN_KEYS))
def test_both_layouts_load_to_the_same_settings(
    tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    new = load(tmp_path, tables(backend))
    assert new.deprecations == ()
    settings = new.mail.provider(backend)
    assert isinstance(settings, backend_class(backend).Settings)
    assert (new.mail.backend, new.mail.batch_size) == (backend, 7)

    with caplog.at_level(logging.WARNING, logger="newsletter.config"):
        old = load(tmp_path, flat(backend))
    assert old.mail == new.mail
    (message,) = old.deprecations
    assert message in caplog.text  # logged, so every command shows it
    line = 1 + (MINIMAL + flat(backend)).splitlines().index(OWN_KEYS[backend].splitlines()[0])
    assert message.startswith(f"{tmp_path / 'newsletter.toml'}:{line}: ")
    assert "deprecated" in message and "next release" in message
    # What it prints is the table to write instead: pasted, it loads to the same settings.
    assert pasted_form(message) == f"[mail.{backend}]\n{OWN_KEYS[backend]}"
    pasted = load(
        tmp_path, f'\n[mail]\nbackend = "{backend}"\nbatch_size = 7\n\n' + pasted_form(message)
    )
    assert pasted.mail == new.mail and pasted.deprecations == ()


def test_the_settings_hold_what_the_table_says(tmp_path: Path) -> None:
    postmark = load(tmp_path, tables("postmark")).mail.provider("postmark")
    assert postmark == PostmarkSettings(
        token_env="PM_TOKEN", base_url="http://127.0.0.1:9", timeout=12.0, message_stream="news"
    )
    mailgun = load(tmp_path, tables("mailgun")).mail.provider("mailgun")
    assert (mailgun.domain, mailgun.region, mailgun.max_retries) == ("mg.example.org", "eu", 5)
    smtp = load(tmp_path, tables("smtp")).mail.provider("smtp")
    assert smtp == SMTPSettings(
        host="mail.example.org",
        port=2525,
        security="tls",
        username="editor",
        password_env="SMTP_PASSWORD",
    )
    outbox = load(tmp_path, tables("outbox")).mail.provider("outbox")
    assert outbox.outbox_dir == tmp_path / "mail-out"  # relative to the config file


def test_a_chosen_backend_without_a_table_gets_its_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.mail.backend == "outbox"
    assert config.mail.provider("outbox").outbox_dir == tmp_path / "outbox"
    assert config.mail.provider("postmark") is None  # neither chosen nor configured


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        # required only by the chosen backend, named in its table
        ('\n[mail]\nbackend = "postmark"\n', "mail.postmark.token_env", "is required by the"),
        (
            '\n[mail]\nbackend = "mailgun"\n[mail.mailgun]\ntoken_env = "K"\n',
            "mail.mailgun.domain",
            "is required by the 'mailgun' backend",
        ),
        ('\n[mail]\nbackend = "smtp"\n', "mail.smtp.host", "is required by the 'smtp' backend"),
        # each backend checks its own keys, with the file's line and "did you mean"
        (
            '\n[mail]\nbackend = "postmark"\n[mail.postmark]\ntoken_env = "T"\n'
            'mesage_stream = "x"\n',
            "mail.postmark.mesage_stream",
            "did you mean 'message_stream'?",
        ),
        (
            '\n[mail.mailgun]\nregion = "ap"\n',
            "mail.mailgun.region",
            'expected "us" or "eu", got \'ap\'',
        ),
        ('\n[mail.smtp]\nsecurity = "ssl"\n', "mail.smtp.security", "expected one of"),
        ('\n[mail.sendgrid]\ntoken_env = "not a name"\n', "mail.sendgrid.token_env", "NAME"),
        ('\n[mail.resend]\nbase_url = "ftp://x"\n', "mail.resend.base_url", "http(s) URL"),
        (
            '\n[mail.postmark]\nwebhook_user_env = "U"\n',
            "mail.postmark.webhook_password_env",
            "needs both",
        ),
        # the flat layout's own mistakes
        (
            '\n[mail]\nbackend = "smtp"\nhost = "h"\ntoken_env = "T"\n',
            "mail.token_env",
            "is not used by the 'smtp' backend",
        ),
        (
            '\n[mail]\nbackend = "smtp"\nport = 25\n[mail.smtp]\nhost = "h"\n',
            "mail.port",
            "belongs in [mail.smtp]",
        ),
        ('\n[mail]\nbackend = "outbox"\noutbox_dri = "x"\n', "mail.outbox_dri", "did you mean"),
        ('\n[mail]\nbackend = "pigeon"\n', "mail.backend", "expected one of outbox, postmark"),
    ],
)
def test_mistakes_name_file_line_and_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.key == key
    assert message in info.value.message
    last = key.rsplit(".", 1)[-1]
    rows = (MINIMAL + text).splitlines()
    at = [n for n, row in enumerate(rows, 1) if row.split("=")[0].strip() == last]
    if at:  # a key that is there is pointed at; a missing one at its table
        assert info.value.line == at[0]


def test_another_providers_table_is_read_for_its_webhook_only(tmp_path: Path) -> None:
    """After moving from Mailgun to SMTP, Mailgun's late bounces still arrive: its table is
    read (its webhook key kept) without requiring what sending through it would need."""
    config = load(
        tmp_path,
        tables("smtp") + '\n[mail.mailgun]\nwebhook_signing_key_env = "MG_SIGNING_KEY"\n',
    )
    assert config.mail.backend == "smtp"
    assert config.mail.provider("mailgun") == MailgunSettings(
        webhook_signing_key_env="MG_SIGNING_KEY"
    )


def test_the_old_web_webhook_keys_move_to_the_providers_tables(tmp_path: Path) -> None:
    old_web = (
        '\n[web]\nport = 8081\npostmark_webhook_user_env = "PM_USER"\n'
        'postmark_webhook_password_env = "PM_PASSWORD"\nmailgun_signing_key_env = "MG_KEY"\n'
    )
    old = load(tmp_path, old_web)
    assert old.web.port == 8081
    assert old.mail.provider("postmark").webhook_user_env == "PM_USER"
    assert old.mail.provider("mailgun").webhook_signing_key_env == "MG_KEY"
    assert len(old.deprecations) == 3
    pasted = "".join("\n" + pasted_form(m) for m in old.deprecations)
    assert '[mail.mailgun]\nwebhook_signing_key_env = "MG_KEY"\n' in pasted
    # Pasted as printed (two tables for Postmark merged by hand), it loads the same.
    new = load(
        tmp_path,
        '\n[web]\nport = 8081\n\n[mail.postmark]\nwebhook_user_env = "PM_USER"\n'
        'webhook_password_env = "PM_PASSWORD"\n\n[mail.mailgun]\n'
        'webhook_signing_key_env = "MG_KEY"\n',
    )
    assert new.mail == old.mail and new.deprecations == ()

    with pytest.raises(ConfigError) as info:
        load(tmp_path, old_web + '\n[mail.mailgun]\nwebhook_signing_key_env = "OTHER"\n')
    assert info.value.key == "mail.mailgun.webhook_signing_key_env"
    assert "also given in [web]" in info.value.message


def test_the_starter_and_the_example_use_the_tables(tmp_path: Path) -> None:
    result = newsletter("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "newsletter.toml").read_text()
    assert "[mail.outbox]" in text
    assert load_config(tmp_path / "newsletter.toml").deprecations == ()


def test_the_cli_shows_the_deprecation_with_the_form_to_write(example_project: Path) -> None:
    text = example_project.read_text()
    text = re.sub(r"(?m)^\[mail\.outbox\]\n", "", text)  # outbox_dir back into [mail]
    example_project.write_text(text)
    result = newsletter("--config", str(example_project), "feeds")
    assert result.returncode == 0, result.stderr
    assert "deprecated" in result.stderr
    assert "[mail.outbox]" in result.stderr and 'outbox_dir = "outbox"' in result.stderr


@dataclasses.dataclass(frozen=True)
class _PigeonSettings(BackendSettings):
    loft: str = "roof"

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> _PigeonSettings:
        t.allow("loft")
        if selected:
            t.require("loft")
        return cls(loft=t.text("loft", "roof"))


class _Pigeon(MailBackend, settings=_PigeonSettings):
    """A backend living outside the package (a plugin): registered, it is configured by its own
    table like the built-in ones, without any change to ``config``."""

    name = "pigeon"

    @classmethod
    def from_config(cls, config: Config) -> _Pigeon:
        cls.settings(config)
        return cls(**cls.common_options(config))

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        return [sent_result(r, None) for r in batch.recipients]


def test_a_registered_backend_owns_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "pigeon", f"{__name__}:_Pigeon")
    config = load(tmp_path, '\n[mail]\nbackend = "pigeon"\n[mail.pigeon]\nloft = "barn"\n')
    assert config.mail.provider("pigeon") == _PigeonSettings(loft="barn")
    assert isinstance(make_backend(config), _Pigeon)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, '\n[mail]\nbackend = "pigeon"\n')
    assert (info.value.key, info.value.message) == (
        "mail.pigeon.loft",
        "is required by the 'pigeon' backend",
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, '\n[mail]\nbackend = "pigeon"\n[mail.pigeon]\nlfot = "barn"\n')
    assert (info.value.key, info.value.line) == ("mail.pigeon.lfot", 10)
    assert "did you mean 'loft'?" in info.value.message
