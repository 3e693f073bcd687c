"""The webhook action's pure parts: the YAML model's errors, the signature (checked against the
independent `standardwebhooks` package), the outcome table and Retry-After, and the retry
schedule that honours it (SPEC section 3b)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from inbound.actions.base import ActionContext
from inbound.actions.webhook import WebhookAction, check_response, retry_after
from inbound.core.errors import (
    ConfigError,
    InputError,
    PermanentActionError,
    TransientActionError,
)
from inbound.core.services import HttpResponse
from inbound.core.steps import StepKey
from inbound.core.verdicts import Verdicts
from inbound.message.signing import SecretError, signed_headers, signing_key, webhook_id
from inbound.rules.book import RuleBook
from inbound.rules.load import environment_issues, parse_rule_set
from inbound.run.context import RunSubject, action_context
from inbound.spool.retry import next_attempt_at
from inbound.targets.http import WebhookHttp
from inbound.targets.memory import MemoryServices

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
BODY = b'{"subject": "caf\xc3\xa9"}'


def rule_set(action: str) -> str:
    return f"""\
version: 1
name: t
domains: [example.com]
rules:
  - name: hooks
    actions:
      - {action}
"""


def errors_of(action: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_rule_set(rule_set(action), "rules.yaml")
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            '{type: webhook, url: "ftp://app.example.com/x"}',
            "rules.yaml:7:30: rules[0].actions[0].url: 'ftp://app.example.com/x' is not an "
            "http:// or https:// URL",
        ),
        (
            '{type: webhook, url: "https://app.example.com/x", timeout: 10 seconds}',
            "rules.yaml:7:68: rules[0].actions[0].timeout: '10 seconds' is not a duration like "
            "10s, 500ms or 1m",
        ),
        (
            '{type: webhook, url: "https://app.example.com/x", timeout: 2m}',
            "rules.yaml:7:68: rules[0].actions[0].timeout: '2m': must be more than 0 and at "
            "most 60s",
        ),
        (
            '{type: webhook, url: "https://u:p@app.example.com/x"}',
            "rules.yaml:7:30: rules[0].actions[0].url: a URL must not carry credentials (they "
            "would be shown in traces): sign with secret_env, or send a header",
        ),
        (
            '{type: webhook, url: "https://app.example.com/x", formt: raw}',
            "rules.yaml:7:59: rules[0].actions[0].formt: unknown key 'formt' (did you mean "
            "'format'?)",
        ),
        (
            '{type: webhook, url: "https://app.example.com/x", format: raw, attachments: omit}',
            "rules.yaml:7:85: rules[0].actions[0].attachments: attachments applies to format: "
            "parsed only",
        ),
        (
            '{type: webhook, url: "https://app.example.com/x", headers: {Webhook-Id: x}}',
            "rules.yaml:7:68: rules[0].actions[0].headers: Webhook-Id: set by inbound on every "
            "request",
        ),
        (
            '{type: webhook, url: "https://app.example.com/x", secret_env: "A-B"}',
            "rules.yaml:7:71: rules[0].actions[0].secret_env: 'A-B' is not an environment "
            "variable name",
        ),
    ],
    ids=[
        "scheme",
        "timeout_words",
        "timeout_too_long",
        "credentials",
        "typo",
        "parsed_only",
        "reserved_header",
        "env_name",
    ],
)
def test_model_errors_name_file_line_column_and_field(action: str, expected: str) -> None:
    assert errors_of(action) == [expected]


def test_max_inline_bytes_takes_sizes() -> None:
    for written, size in (
        ("1048576", 1048576),
        ("1 MB", 1048576),
        ("512KB", 524288),
        ("1MiB", 1048576),
    ):
        text = rule_set(
            f'{{type: webhook, url: "https://a.example/x", max_inline_bytes: {written}}}'
        )
        (rule,) = parse_rule_set(text, "r.yaml").rule_set.rules
        (action,) = rule.actions
        assert isinstance(action, WebhookAction)
        assert action.max_inline_bytes == size
    (error,) = errors_of('{type: webhook, url: "https://a.example/x", max_inline_bytes: big}')
    assert error == (
        "rules.yaml:7:71: rules[0].actions[0].max_inline_bytes: 'big' is not a size like "
        "1048576, 512KB or 1MB"
    )


def test_url_attachments_need_a_bucket() -> None:
    (error,) = errors_of('{type: webhook, url: "https://a.example/x", attachments: url}')
    assert error.endswith("attachments: url needs attachments_bucket (where they are stored)")


def test_check_warns_when_unsigned_and_when_plain_http_leaves_the_host() -> None:
    loaded = parse_rule_set(rule_set('{type: webhook, url: "http://app.example.com/x"}'), "r.yaml")
    assert [str(w) for w in loaded.warnings] == [
        "r.yaml:7:9: warning: rules[0].actions[0]: no secret_env: requests are not signed, so "
        "the endpoint cannot tell them from forged ones",
        "r.yaml:7:30: warning: rules[0].actions[0].url: http:// sends the mail unencrypted: "
        "use https://",
    ]
    local = parse_rule_set(
        rule_set('{type: webhook, url: "http://127.0.0.1:8080/x", secret_env: S}'), "r.yaml"
    )
    assert local.warnings == []


def test_an_unset_secret_env_is_an_issue_at_its_position_without_the_value() -> None:
    loaded = parse_rule_set(
        rule_set('{type: webhook, url: "https://a.example/x", secret_env: HOOK_SECRET}'), "r.yaml"
    )
    (issue,) = environment_issues(loaded, {})
    assert str(issue) == (
        "r.yaml:7:65: rules[0].actions[0].secret_env: environment variable HOOK_SECRET is not set"
    )
    (bad,) = environment_issues(loaded, {"HOOK_SECRET": "whsec_!!not base64!!"})
    assert "not base64" not in str(bad)
    assert "must be followed by base64" in str(bad)
    assert environment_issues(loaded, {"HOOK_SECRET": "whsec_c2VjcmV0"}) == []


@pytest.mark.parametrize(
    "secret",
    ["whsec_" + base64.b64encode(bytes(range(24))).decode(), "whsec_c2VjcmV0IGtleQ"],
    ids=["whsec", "whsec_unpadded"],
)
def test_the_signature_verifies_with_standardwebhooks(secret: str) -> None:
    headers = dict(signed_headers("msg-1-0-2", int(NOW.timestamp()), BODY, signing_key(secret)))
    verifier = Webhook(secret)
    verifier._Webhook__verify_timestamp = lambda _: NOW  # type: ignore[attr-defined]
    assert verifier.verify(BODY, headers) == {"subject": "café"}
    with pytest.raises(WebhookVerificationError):
        verifier.verify(BODY.replace(b"caf", b"cag"), headers)


def test_a_plain_secret_is_its_utf8_bytes() -> None:
    headers = dict(signed_headers("id", int(NOW.timestamp()), BODY, signing_key("plain sécret")))
    verifier = Webhook("plain sécret".encode())
    verifier._Webhook__verify_timestamp = lambda _: NOW  # type: ignore[attr-defined]
    verifier.verify(BODY, headers)


def test_secrets_that_cannot_sign() -> None:
    for secret in ("", "whsec_", "whsec_***"):
        with pytest.raises(SecretError) as caught:
            signing_key(secret)
        assert secret.removeprefix("whsec_") not in str(caught.value) or not secret[6:]


def test_unsigned_has_id_and_timestamp_only() -> None:
    assert signed_headers("x", 5, BODY, None) == (("webhook-id", "x"), ("webhook-timestamp", "5"))
    assert webhook_id("m", 1, 2) == "m-1-2"


def answered(status: int, **headers: str) -> HttpResponse:
    return HttpResponse(status, "Reason", {k.replace("_", "-"): v for k, v in headers.items()})


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_succeeds(status: int) -> None:
    check_response(answered(status), "https://a.example/x", NOW)


@pytest.mark.parametrize("status", [301, 302, 307, 308, 400, 401, 403, 404, 410, 413, 422])
def test_3xx_and_4xx_are_permanent_with_the_status(status: int) -> None:
    with pytest.raises(PermanentActionError, match=f"answered {status} Reason"):
        check_response(answered(status), "https://a.example/x", NOW)


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 599])
def test_some_4xx_and_5xx_are_transient(status: int) -> None:
    with pytest.raises(TransientActionError, match=str(status)) as caught:
        check_response(answered(status, retry_after="7"), "https://a.example/x", NOW)
    expected = 7.0 if status in (429, 503) else None
    assert caught.value.retry_after == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("Sun, 06 Dec 2026 12:00:30 GMT", 30.0),
        ("Sun, 06 Dec 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    assert retry_after(value, NOW) == seconds


def test_retry_after_replaces_the_backoff_within_the_schedule() -> None:
    received = NOW - timedelta(minutes=10)
    window = timedelta(hours=4)
    plain = next_attempt_at(1, received, NOW, window, base=60, cap=3600)
    assert plain == NOW + timedelta(seconds=60)
    asked = next_attempt_at(1, received, NOW, window, base=60, cap=3600, retry_after=2)
    assert asked == NOW + timedelta(seconds=2)
    capped = next_attempt_at(1, received, NOW, window, base=60, cap=3600, retry_after=86400)
    assert capped == NOW + timedelta(seconds=3600)
    late = next_attempt_at(
        1, NOW - window + timedelta(seconds=30), NOW, window, base=60, cap=3600, retry_after=600
    )
    assert late == NOW + timedelta(seconds=30)  # the deadline, not later


def test_the_ca_file_must_hold_a_certificate(tmp_path: Path) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("")
    with pytest.raises(InputError, match="no PEM CA certificate"):
        WebhookHttp(ca_file=empty)
    with pytest.raises(InputError, match="no such file"):
        WebhookHttp(ca_file=tmp_path / "missing.pem")


def context(content: bytes) -> ActionContext:
    subject = RunSubject(
        message_id="m1",
        mail_from="a@sender.example",
        base=content,
        received_at=NOW,
        processing_ms=lambda: 5,
    )
    return action_context(
        subject, content, ("b@example.com",), Verdicts(), rule="app", step=StepKey(1, 2)
    )


def test_ses_format_is_base64_when_the_message_is_not_utf8() -> None:
    action = WebhookAction.model_validate(
        {"type": "webhook", "url": "https://a.example/x", "format": "ses"}
    )
    latin1 = b"From: a@sender.example\r\nSubject: caf\xe9\r\n\r\ncaf\xe9\r\n"
    request = asyncio.run(
        action.request(context(latin1), MemoryServices().services, key=None, now=7)
    )
    notification = json.loads(request.body)
    assert notification["receipt"]["action"]["encoding"] == "BASE64"
    assert base64.b64decode(notification["content"]) == latin1
    assert dict(request.headers)["webhook-id"] == "m1-1-2"
    assert dict(request.headers)["webhook-timestamp"] == "7"


def test_a_reload_with_an_unset_secret_env_keeps_the_rules_in_force(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    path = tmp_path / "rules.yaml"
    path.write_text(rule_set("{type: s3, bucket: mail}"))
    book = RuleBook(
        path,
        save_text=lambda text: text[-12:],
        load_text=lambda digest: "",
        check=lambda loaded: environment_issues(loaded, env),
    )
    before = book.current
    path.write_text(rule_set('{type: webhook, url: "https://a.example/x", secret_env: HOOK_S}'))
    with pytest.raises(ConfigError, match="environment variable HOOK_S is not set"):
        book.reload()
    assert book.current is before
    env["HOOK_S"] = "whsec_c2VjcmV0"
    assert book.reload() is book.current is not before
