"""Amazon SES specifics, against its loopback emulator (``tests.emulators.SESEmulator``), which
validates every request against botocore's ``sesv2`` model and recomputes its signature.

Literal braces in the digest, 7-bit local parts and IDNA domains, entries SES throttles inside
an accepted call (retried alone, counted where they arrive), throttling errors, the errors
that stop a send, configuration sets, regions, SigV4 on every attempt, and the credential
chain. The AWS environment is hermetic: the emulator's keys, empty shared files, no instance
metadata.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.exceptions import ConfigError
from newsletter.mail import make_backend
from newsletter.mail.base import PreparedContent, SendCounts
from newsletter.mail.ses import SESBackend, SESSettings, aws_setup, default_base_url, handlebars
from newsletter.types import DeliveryStatus
from tests._factories import CONFIG, ListLedger, make_config
from tests.emulators import (
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    AWS_VARIABLES,
    RenderingFailure,
    SESEmulator,
    aws_environment,
    render_handlebars,
)
from tests.test_mail_contract import RECIPIENTS, content, recipient

KEYS = Credentials(AWS_ACCESS_KEY, AWS_SECRET_KEY)


@pytest.fixture(autouse=True)
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = aws_environment(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def ses() -> Iterator[SESEmulator]:
    with SESEmulator(configuration_sets=("weekly",)) as emulator:
        yield emulator
        assert emulator.problems == []  # every request kept to the model and was signed right


def make(emulator: SESEmulator, **options: Any) -> SESBackend:
    options = {
        "credentials": KEYS,
        "region": emulator.region,
        "max_retries": 3,
        "backoff_factor": 0.01,
        "timeout": 5,
        **options,
    }
    return SESBackend(base_url=emulator.base_url, **options)


def sent_bodies(emulator: SESEmulator) -> dict[str, tuple[str, str]]:
    return {d.to: (d.html, d.text) for d in emulator.deliveries}


# --- the template ------------------------------------------------------------------------------


BRACES = "{{ not a var }} and {{{raw}}} and \\{{escaped}} and {{{{block}}}} and C:\\\\{{x}}"


def test_literal_braces_in_the_digest_arrive_as_written(ses: SESEmulator) -> None:
    digest = content(
        subject="Weekly: {{ not a var }}",
        html=f"<h2>{BRACES}</h2><p>Hi nlvar:first_name}}}}, {{nlvar:name}}\\</p>"
        '<a href="nlvar:unsubscribe_url">x</a>',
        text=f"{BRACES}\nHi nlvar:first_name}}}}, {{{{nlvar:name\\\\\nnlvar:unsubscribe_url\n",
    )
    assert make(ses).send(digest, ListLedger(RECIPIENTS)) == SendCounts(sent=3)
    prepared = PreparedContent(digest)
    for rcpt in RECIPIENTS:
        [message] = [d for d in ses.deliveries if d.to == rcpt.email]
        # What every other backend sends: the digest, filled, character for character.
        assert message.html == prepared.html.fill(rcpt.values)
        assert message.text == prepared.text.fill(rcpt.values)
        assert message.subject == "Weekly: {{ not a var }}"
    assert ses.rendering_failures == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="{}\\ab", max_size=8), min_size=1, max_size=5),
    st.data(),
)
def test_any_literal_text_renders_as_itself(literals: list[str], data: st.DataObject) -> None:
    values = [data.draw(st.text(alphabet="{}\\xy", max_size=3)) for _ in literals[1:]]
    names = [f"v{i}" for i in range(len(values))]
    source = handlebars(literals, ["{{{" + name + "}}}" for name in names])
    rendered = render_handlebars(
        source, {"nl_lb": "{", "nl_rb": "}", "nl_bs": "\\", **dict(zip(names, values, strict=True))}
    )
    expected = literals[0] + "".join(v + lit for v, lit in zip(values, literals[1:], strict=True))
    assert rendered == expected


def test_the_emulator_catches_unescaped_handlebars() -> None:
    for template in ("{{ not a var }}", "a\\{{x}}", "{{{{raw}}}}", "{{missing}}"):
        with pytest.raises(RenderingFailure):
            render_handlebars(template, {"x": "1"})
    assert render_handlebars("{{x}} {{{x}}}", {"x": "<&>"}) == "&lt;&amp;&gt; <&>"


# --- addresses ---------------------------------------------------------------------------------


def test_only_7_bit_local_parts_go_out_and_domains_go_as_idna(ses: SESEmulator) -> None:
    people = [
        recipient(1, "jörg@example.com", None),
        recipient(2, "ana@bücher.example", "Ana Müller"),
        recipient(3, "plain@example.org", None),
    ]
    ledger = ListLedger(people)
    assert make(ses).send(content(), ledger) == SendCounts(sent=2, failed=1)
    by_id = {r.subscriber_id: r for r in ledger.results}
    assert by_id[1].status == DeliveryStatus.FAILED
    assert by_id[1].error is not None and "7-bit ASCII" in by_id[1].error
    assert by_id[1].error.startswith("ses: ")
    assert sorted(ses.delivered_to()) == ["ana@xn--bcher-kva.example", "plain@example.org"]
    [request] = ses.requests
    to = [e["Destination"]["ToAddresses"][0] for e in request.json()["BulkEmailEntries"]]
    # A non-ASCII display name travels in an RFC 2047 encoded word.
    assert to[0].startswith("=?utf-8?") and to[0].endswith("<ana@xn--bcher-kva.example>")


def test_a_non_ascii_sender_name_travels_encoded(ses: SESEmulator) -> None:
    digest = content(from_addr="Zoë's Weekly <weekly@news.example.org>")
    assert make(ses).send(digest, ListLedger(RECIPIENTS[:1])).sent == 1
    sender = ses.requests[0].json()["FromEmailAddress"]
    assert sender.startswith("=?utf-8?") and sender.endswith(" <weekly@news.example.org>")


# --- retries -----------------------------------------------------------------------------------


def test_a_lost_answer_leaves_the_batch_uncertain_and_unrepeated(ses: SESEmulator) -> None:
    ses.drop()
    ledger = ListLedger(RECIPIENTS)
    assert make(ses).send(content(), ledger) == SendCounts(uncertain=3)
    assert len(ses.requests) == 1 and len(ledger.uncertain_batches) == 1
    assert sorted(ses.delivered_to()) == sorted(r.email for r in RECIPIENTS)  # SES took it


def test_an_unreachable_endpoint_is_retried_then_left_pending() -> None:
    with SESEmulator() as emulator:
        url = emulator.base_url
    backend = SESBackend(
        credentials=KEYS, region="us-east-1", base_url=url, max_retries=2, backoff_factor=0.01
    )
    ledger = ListLedger(RECIPIENTS)
    counts = backend.send(content(), ledger)
    assert counts.stopped is not None and counts.stopped.retryable
    assert "still so after 3 tries" in str(counts.stopped)
    assert len(ledger.pending) == 3 and ledger.results == []


def test_entries_throttled_inside_an_accepted_call_are_retried_alone(ses: SESEmulator) -> None:
    ada, grace, zoe = (r.email for r in RECIPIENTS)
    ses.fail_entry(ada, "ACCOUNT_THROTTLED", times=2)
    ses.fail_entry(grace, "TRANSIENT_FAILURE")
    ledger = ListLedger(RECIPIENTS)
    assert make(ses).send(content(), ledger) == SendCounts(sent=3)
    assert {r.status for r in ledger.results} == {DeliveryStatus.SENT}
    # Counted where they arrive: exactly one message each, the retries only for the throttled.
    assert Counter(ses.delivered_to()) == {ada: 1, grace: 1, zoe: 1}
    posted = [
        [e["Destination"]["ToAddresses"][0] for e in r.json()["BulkEmailEntries"]]
        for r in ses.requests
    ]
    assert [len(p) for p in posted] == [3, 2, 1]
    assert ada in posted[2][0] and zoe not in " ".join(posted[1] + posted[2])


def test_entries_throttled_past_the_retries_stay_pending(ses: SESEmulator) -> None:
    ada = RECIPIENTS[0].email
    ses.fail_entry(ada, "ACCOUNT_THROTTLED", times=10)
    ledger = ListLedger(RECIPIENTS)
    counts = make(ses, max_retries=2).send(content(), ledger)
    assert (counts.sent, counts.failed) == (2, 0)
    assert counts.stopped is not None and counts.stopped.retryable
    assert "ACCOUNT_THROTTLED" in str(counts.stopped)
    assert [r.email for r in ledger.pending] == [ada]  # for a later run, never failed
    assert len(ses.requests) == 3
    assert sorted(ses.delivered_to()) == sorted(r.email for r in RECIPIENTS[1:])


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (429, {"message": "Too many requests."}),
        (400, {"code": "ThrottlingException", "message": "Maximum sending rate exceeded."}),
        (400, {"code": "LimitExceededException", "message": "Rate exceeded"}),
        (503, {"code": "ServiceUnavailable", "message": "Service unavailable"}),
    ],
)
def test_throttling_errors_are_retried(ses: SESEmulator, status: int, detail: Any) -> None:
    ses.fail(status, times=2, **detail)
    ledger = ListLedger(RECIPIENTS)
    assert make(ses).send(content(), ledger) == SendCounts(sent=3)
    assert len(ses.requests) == 3
    assert Counter(ses.delivered_to()) == {r.email: 1 for r in RECIPIENTS}


def test_every_attempt_is_signed_anew(ses: SESEmulator) -> None:
    """Temporary credentials that botocore refreshes before each use: every retry carries the
    session token of its own signing, and the emulator verified each signature."""
    tokens = iter(f"session-token-{i}" for i in range(100))

    def refresh() -> dict[str, str]:
        expiry = datetime.now(UTC) + timedelta(minutes=1)  # inside botocore's refresh window
        return {
            "access_key": AWS_ACCESS_KEY,
            "secret_key": AWS_SECRET_KEY,
            "token": next(tokens),
            "expiry_time": expiry.isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    ses.fail(400, times=2, code="ThrottlingException", message="Maximum sending rate exceeded.")
    assert make(ses, credentials=credentials).send(content(), ListLedger(RECIPIENTS)).sent == 3
    seen = [r.headers.get("x-amz-security-token") for r in ses.requests]
    assert len(seen) == 3 and len(set(seen)) == 3 and None not in seen
    assert all("x-amz-security-token" in r.headers["authorization"] for r in ses.requests)


def test_the_daily_quota_stops_the_send_at_once(ses: SESEmulator) -> None:
    ses.fail(400, code="ThrottlingException", message="Daily message quota exceeded.")
    ledger = ListLedger(RECIPIENTS)
    counts = make(ses).send(content(), ledger)
    assert counts.sent == 0 and counts.stopped is not None and counts.stopped.retryable
    assert "Daily message quota exceeded" in str(counts.stopped)
    assert len(ses.requests) == 1 and len(ledger.pending) == 3


# --- errors that stop or refuse ----------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["SendingPausedException", "AccountSuspendedException", "MailFromDomainNotVerifiedException"],
)
def test_account_errors_stop_the_send(ses: SESEmulator, code: str) -> None:
    ses.fail(400, code=code, message=f"{code} says no.")
    ledger = ListLedger(RECIPIENTS)
    counts = make(ses).send(content(), ledger)
    assert counts.stopped is not None and counts.stopped.fatal
    assert f"{code} says no. ({code})" in str(counts.stopped)
    assert ledger.results == [] and len(ledger.pending) == 3  # back to pending, not failed


def test_an_account_status_inside_the_answer_stops_and_keeps_the_sent(ses: SESEmulator) -> None:
    ses.fail_entry(RECIPIENTS[1].email, "ACCOUNT_SENDING_PAUSED", error="Sending paused.")
    ledger = ListLedger(RECIPIENTS)
    counts = make(ses).send(content(), ledger)
    assert counts.sent == 2 and counts.stopped is not None and counts.stopped.fatal
    assert "Sending paused. (ACCOUNT_SENDING_PAUSED)" in str(counts.stopped)
    assert [r.email for r in ledger.pending] == [RECIPIENTS[1].email]
    assert {r.email for r in ledger.results} == {RECIPIENTS[0].email, RECIPIENTS[2].email}


def test_a_rejected_entry_fails_alone_and_a_rejected_call_fails_its_batch(
    ses: SESEmulator,
) -> None:
    ses.reject(RECIPIENTS[0].email)
    ledger = ListLedger(RECIPIENTS)
    assert make(ses).send(content(), ledger) == SendCounts(sent=2, failed=1)
    [failed] = [r for r in ledger.results if r.status == DeliveryStatus.FAILED]
    assert failed.error == "ses: Address blacklisted. (MESSAGE_REJECTED)"

    ses.fail(400, code="MessageRejected", message="Email address is not verified.")
    again = ListLedger(RECIPIENTS[1:])
    assert make(ses).send(content(digest_uid="second"), again) == SendCounts(failed=2)
    assert all(
        "Email address is not verified. (MessageRejected)" in (r.error or "") for r in again.results
    )


# --- region, configuration set, signature, credentials -----------------------------------------


def test_region_and_configuration_set_are_sent() -> None:
    assert default_base_url("eu-central-1") == "https://email.eu-central-1.amazonaws.com"
    assert default_base_url("cn-north-1") == "https://email.cn-north-1.amazonaws.com.cn"
    with pytest.raises(ValueError, match="region"):
        SESBackend(credentials=KEYS, region="eu")
    with SESEmulator(region="eu-central-1", configuration_sets=("weekly",)) as emulator:
        backend = make(emulator, configuration_set="weekly")
        assert "eu-central-1" in backend.describe() and "weekly" in backend.describe()
        assert AWS_SECRET_KEY not in backend.describe()
        assert backend.send(content(), ListLedger(RECIPIENTS)).sent == 3
        [request] = emulator.requests
        assert request.json()["ConfigurationSetName"] == "weekly"
        assert "/eu-central-1/ses/aws4_request" in request.headers["authorization"]
        # An unknown configuration set stops the send with SES's words.
        counts = make(emulator, configuration_set="nope").send(content(), ListLedger(RECIPIENTS))
        assert counts.stopped is not None and counts.stopped.fatal
        assert "Configuration set <nope> does not exist." in str(counts.stopped)
        assert emulator.problems == []


def test_a_wrong_secret_fails_the_signature_check(ses: SESEmulator) -> None:
    wrong = Credentials(AWS_ACCESS_KEY, "not-the-secret")
    counts = make(ses, credentials=wrong).send(content(), ListLedger(RECIPIENTS))
    assert counts.stopped is not None and counts.stopped.fatal
    assert "InvalidSignatureException" in str(counts.stopped)
    assert ses.deliveries == []
    assert ses.problems == [
        "The request signature we calculated does not match the signature you provided."
    ]
    ses.problems.clear()


def test_the_credential_chain_reads_the_environment_and_profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = aws_setup()
    assert found.credentials is not None and found.credentials.access_key == AWS_ACCESS_KEY
    assert found.region == "us-east-1"
    (tmp_path / "aws-credentials").write_text(
        "[weekly]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n"
    )
    (tmp_path / "aws-config").write_text("[profile weekly]\nregion = eu-west-1\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    profile = aws_setup("weekly")
    assert profile.credentials is not None
    assert (profile.credentials.access_key, profile.region) == ("AKIAPROFILE", "eu-west-1")
    assert aws_setup().credentials is None  # nothing else in the chain (no metadata service)


def test_without_botocore_ses_asks_for_the_extra() -> None:
    code = (
        "import sys; sys.modules['botocore'] = None\n"
        "import newsletter.mail.ses as ses\n"  # importing the module still works
        "from newsletter.exceptions import ConfigError\n"
        "try:\n    ses.aws_setup()\nexcept ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'newsletter[ses]'" in out.stdout


def test_a_stop_request_cuts_the_backoff_short(ses: SESEmulator) -> None:
    ses.fail(429, times=50)
    stop = threading.Event()
    backend = make(ses, max_retries=50, backoff_factor=5)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    counts = backend.send(content(), ListLedger(RECIPIENTS), stopping=stop)
    timer.join()
    assert counts.interrupted and counts.sent == 0
    assert len(ses.requests) == 1


# --- configuration -----------------------------------------------------------------------------


def ses_table(body: str = "") -> str:
    return '[mail]\nbackend = "ses"\n\n[mail.ses]\n' + body


def test_configured_from_its_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(
        tmp_path,
        ses_table(
            'region = "eu-west-1"\nconfiguration_set = "weekly"\ntimeout = 7\nmax_retries = 1\n'
            'sns_topic_arns = ["arn:aws:sns:eu-west-1:123456789012:ses-bounces"]\n'
        ),
    )
    settings = config.mail.provider("ses")
    assert isinstance(settings, SESSettings)
    assert settings.sns_topic_arns == ("arn:aws:sns:eu-west-1:123456789012:ses-bounces",)
    assert re.match(
        settings.sns_certificate_url_pattern,
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",
    )
    backend = make_backend(config)
    assert isinstance(backend, SESBackend)
    assert (backend.region, backend.configuration_set) == ("eu-west-1", "weekly")
    assert (backend.timeout, backend.max_retries) == (7, 1)
    assert backend.base_url == "https://email.eu-west-1.amazonaws.com"
    assert AWS_SECRET_KEY not in backend.describe()
    # Without a region in the table, the AWS chain's (AWS_DEFAULT_REGION here).
    assert make_backend(make_config(tmp_path, ses_table())).region == "us-east-1"  # type: ignore[attr-defined]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError) as info:
        make_backend(make_config(tmp_path, ses_table()))
    assert info.value.key == "mail.ses.region"


def test_missing_credentials_name_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError) as info:
        make_backend(make_config(tmp_path, ses_table('region = "us-east-1"\n')))
    assert info.value.key == "mail.ses"
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_backend(make_config(tmp_path, ses_table('profile = "nobody"\n')))
    assert info.value.key == "mail.ses.profile"


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        ('region = "eu"', "region", "AWS region such as us-east-1"),
        ('token_env = "SES_TOKEN"', "token_env", "SES takes no token"),
        ('configuration_set = "my set"', "configuration_set", "up to 64"),
        ('sns_topic_arns = ["arn:aws:sns:eu:1:x"]', "sns_topic_arns", "SNS topic ARNs"),
        ('sns_topic_arns = "arn"', "sns_topic_arns", "a list"),
        ('sns_certificate_url_pattern = "(unclosed"', "sns_certificate_url_pattern", "regular"),
        ('sns_subscribe_url_pattern = "[a-"', "sns_subscribe_url_pattern", "regular"),
        ('base_url = "ftp://x"', "base_url", "http(s) URL"),
        ('regoin = "us-east-1"', "regoin", "did you mean 'region'"),
    ],
)
def test_settings_are_checked(tmp_path: Path, line: str, key: str, fragment: str) -> None:
    table = ses_table(line + "\n")
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, table)
    assert info.value.key == f"mail.ses.{key}"
    assert fragment in str(info.value)
    # FILE:LINE of the key, as every config error.
    assert info.value.line == (CONFIG + "\n" + table).splitlines().index(line) + 1
