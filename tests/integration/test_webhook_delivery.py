"""The webhook action through a real `inbound serve` to a real HTTP server on loopback: the
formats as sent, the Standard Webhooks signature (checked with the independent
`standardwebhooks` package), and the outcome table (SPEC section 3b)."""

from __future__ import annotations

import base64
import contextlib
import email
import hashlib
import json
import smtplib
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from inbound.core.message import MimeLimits
from inbound.spool.retry import RetryPolicy
from tests.integration.receiver import Running, in_process, settings_for, wait_for
from tests.integration.webhook_server import Answer, Hook, webhook_server

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"a test key of 32 bytes, no more.").decode()
FAST = RetryPolicy(max_age=timedelta(seconds=60), base_delay=0.2, max_delay=5.0)


def rules(
    url: str, *, fmt: str = "raw", secret: bool = True, extra: str = "", timeout: str = "2s"
) -> str:
    secret_line = "\n        secret_env: TEST_WEBHOOK_SECRET" if secret else ""
    return f"""\
version: 1
name: hooks
domains: [example.com]
rules:
  - name: app
    recipients: [example.com]
    actions:
      - type: webhook
        url: "{url}"
        format: {fmt}
        timeout: {timeout}{secret_line}
        headers: {{X-Tenant: acme}}{extra}
"""


def queued_id(port: int, subject: str = "hello", rcpt: str = "support@example.com") -> str:
    """Send one message; the message ID of its 250."""
    body = (
        f"From: Alice <alice@sender.example>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        "Message-ID: <m1@sender.example>\r\n\r\nHello, app.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(body.encode())
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


@pytest.fixture
def hook() -> Iterator[Hook]:
    with webhook_server() as server:
        yield server


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


def serve(
    tmp_path: Path, text: str, policy: RetryPolicy = FAST
) -> contextlib.AbstractContextManager[Running]:
    return in_process(settings_for(tmp_path, text, retry=policy))


def verify(request_headers: dict[str, str], body: bytes) -> None:
    Webhook(SECRET).verify(body, request_headers, json_parse=False)


def dead_reason(running: Running, message_id: str) -> str:
    path = running.data_dir / "spool" / "dead" / message_id / "state.json"
    wait_for(path.is_file, f"dead letter {message_id}")
    return str(json.loads(path.read_text())["dead_reason"])


def test_raw_format_arrives_as_received_and_signed(tmp_path: Path, hook: Hook) -> None:
    with serve(tmp_path, rules(hook.url(), fmt="raw")) as running:
        message_id = queued_id(running.port)
        (request,) = hook.wait(1)
        running.wait_idle()
    assert request.path == "/hooks/mail"
    assert request.headers["content-type"] == "message/rfc822"
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["webhook-id"] == f"{message_id}-0-0"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    parsed = email.message_from_bytes(request.body)
    assert parsed["Subject"] == "hello"
    assert message_id in parsed["Received"]  # the prepended trace headers (SPEC section 5)
    assert request.body.endswith(b"Hello, app.\r\n")
    verify(request.headers, request.body)
    # One byte of the body changed: the signature no longer verifies.
    changed = request.body[:-3] + b"X" + request.body[-2:]
    with pytest.raises(WebhookVerificationError):
        verify(request.headers, changed)


def test_ses_format_is_the_received_notification_with_content(tmp_path: Path, hook: Hook) -> None:
    with serve(tmp_path, rules(hook.url(), fmt="ses")) as running:
        message_id = queued_id(running.port, subject="ses shaped")
        (request,) = hook.wait(1)
    assert request.headers["content-type"] == "application/json"
    verify(request.headers, request.body)
    notification = json.loads(request.body)
    assert notification["notificationType"] == "Received"
    assert notification["mail"]["messageId"] == message_id
    assert notification["mail"]["commonHeaders"]["subject"] == "ses shaped"
    assert notification["receipt"]["recipients"] == ["support@example.com"]
    assert notification["receipt"]["action"] == {
        "type": "Webhook",
        "url": hook.url(),
        "format": "ses",
        "encoding": "UTF8",
    }
    assert notification["content"].endswith("Hello, app.\r\n")


def test_unsigned_without_secret_env(tmp_path: Path, hook: Hook) -> None:
    with serve(tmp_path, rules(hook.url(), secret=False)) as running:
        queued_id(running.port)
        (request,) = hook.wait(1)
    assert "webhook-signature" not in request.headers
    assert "webhook-id" in request.headers


def test_500_twice_then_200_is_delivered_once_on_the_third_try_with_one_id(
    tmp_path: Path, hook: Hook
) -> None:
    hook.answer(Answer(500), Answer(503))
    with serve(tmp_path, rules(hook.url())) as running:
        message_id = queued_id(running.port)
        requests = hook.wait(3)
        running.wait_idle()
        assert running.queued() == []
    time.sleep(0.5)  # a fourth request would come within the 0.2 s retry delay
    requests = hook.requests()
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {f"{message_id}-0-0"}
    assert len({r.body for r in requests}) == 1
    for request in requests:
        verify(request.headers, request.body)


def test_429_retry_after_is_waited_for(tmp_path: Path, hook: Hook) -> None:
    hook.answer(Answer(429, (("Retry-After", "2"),)))
    with serve(tmp_path, rules(hook.url())) as running:
        queued_id(running.port)
        first, second = hook.wait(2)
        running.wait_idle()
    # The schedule alone would have retried after 0.2 s.
    assert second.at - first.at >= 1.9


def test_410_is_dead_lettered_at_once_with_the_status(tmp_path: Path, hook: Hook) -> None:
    hook.answer(Answer(410))
    with serve(tmp_path, rules(hook.url())) as running:
        message_id = queued_id(running.port)
        reason = dead_reason(running, message_id)
        assert len(hook.requests()) == 1
    assert "410" in reason
    assert reason.startswith("permanent failure")


def test_302_is_permanent_and_not_followed(tmp_path: Path, hook: Hook) -> None:
    hook.answer(Answer(302, (("Location", hook.url("/elsewhere")),)))
    with serve(tmp_path, rules(hook.url())) as running:
        message_id = queued_id(running.port)
        reason = dead_reason(running, message_id)
    assert "302" in reason
    assert [r.path for r in hook.requests()] == ["/hooks/mail"]


def test_a_server_that_never_answers_is_transient_after_the_timeout(
    tmp_path: Path, hook: Hook
) -> None:
    hook.answer(Answer(hang=True))
    with serve(tmp_path, rules(hook.url())) as running:
        message_id = queued_id(running.port)
        first, second = hook.wait(2)
        running.wait_idle()
        state = running.data_dir / "spool" / "dead" / message_id
        assert not state.exists()
    # timeout: 2s, then the 0.2 s retry delay.
    assert 1.9 <= second.at - first.at < 10
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_parsed_format_with_attachments_inline_and_stored(tmp_path: Path, hook: Hook) -> None:
    """The `parsed` payload through `inbound serve`: a small attachment inline, a larger one
    stored in `attachments_bucket` (the local target's file:// URL) with its SHA-256."""
    small, large = b"small attachment\n", bytes(range(256)) * 6000  # over 1 MB: parsed off the loop
    message = EmailMessage()
    message["From"] = "Zoë <zoe@sender.example>"
    message["To"] = "support@example.com"
    message["Subject"] = "Ça va? invoice attached"
    message.set_content("Hello, app.\n")
    message.add_alternative("<p>Hello, app.</p>", subtype="html")
    message.add_attachment(small, maintype="text", subtype="plain", filename="note.txt")
    message.add_attachment(
        large, maintype="application", subtype="octet-stream", filename="data.bin"
    )
    extra = "\n        max_inline_bytes: 1000\n        attachments_bucket: hook-files"
    with serve(tmp_path, rules(hook.url(), fmt="parsed", extra=extra)) as running:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.send_message(message, "zoe@sender.example", ["support@example.com"])
        (request,) = hook.wait(1)
        running.wait_idle()
    assert request.headers["content-type"] == "application/json"
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["rule"] == "app"
    assert payload["from"] == {"name": "Zoë", "address": "zoe@sender.example"}
    assert payload["subject"] == "Ça va? invoice attached"
    assert payload["envelope"] == {
        "mail_from": "zoe@sender.example",
        "rcpt_to": ["support@example.com"],
    }
    assert payload["text"].strip() == "Hello, app."
    assert "<p>Hello, app.</p>" in payload["html"]
    inline, stored = payload["attachments"]
    assert inline["filename"] == "note.txt"
    assert base64.b64decode(inline["content"]) == small
    assert stored["filename"] == "data.bin"
    assert stored["size"] == len(large)
    assert "content" not in stored
    url = urlsplit(stored["url"])
    assert url.scheme == "file"
    fetched = Path(unquote(url.path)).read_bytes()
    assert hashlib.sha256(fetched).hexdigest() == stored["sha256"]
    assert fetched == large


def test_parsed_payload_walks_only_as_far_as_the_receivers_mime_limits(
    tmp_path: Path, hook: Hook
) -> None:
    """`--max-mime-parts 4`: the payload lists the parts the rules saw, and the rest of the
    message once, as received, saying which limit stopped the walk."""
    message = EmailMessage()
    message["From"] = "alice@sender.example"
    message["To"] = "support@example.com"
    message["Subject"] = "many parts"
    message.set_content("Hello, app.\n")
    for n in range(6):
        message.add_attachment(f"part {n}\n".encode(), "text", "plain", filename=f"p{n}.txt")
    settings = settings_for(
        tmp_path, rules(hook.url(), fmt="parsed"), retry=FAST, mime_limits=MimeLimits(4, 8)
    )
    with in_process(settings) as running:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.send_message(message, "alice@sender.example", ["support@example.com"])
        (request,) = hook.wait(1)
        running.wait_idle()
    attachments = Webhook(SECRET).verify(request.body, request.headers)["attachments"]
    named = [a["filename"] for a in attachments if a.get("filename")]
    assert named == ["p0.txt", "p1.txt"], attachments
    (rest,) = [a for a in attachments if not a.get("filename")]
    assert rest["error"] == "more than 4 MIME parts: the rest of the message, as received"
    assert b'filename="p5.txt"' in base64.b64decode(rest["content"])
