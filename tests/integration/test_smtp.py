"""The receiver over real TCP: every reply code of SPEC section 7, with smtplib, aiosmtplib and
raw sockets for byte-exact cases."""

from __future__ import annotations

import asyncio
import base64
import email
import json
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from inbound.intake import Intake
from inbound.receive.limits import ReceiverLimits
from tests.integration.receiver import RULES, Running, in_process, settings_for

pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: Alice <alice@sender.example>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@sender.example>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".leading dot survives transparency\r\n"
)

STRICT_RULES = (
    RULES.replace(
        "domains: [example.com, inbound.example]",
        "domains: [example.com, inbound.example, strict.example]",
    ).replace("recipients: [secure@example.com]", "recipients: [secure@strict.example]")
    + """\
  - name: strict-known
    recipients: [known@strict.example]
    actions:
      - {type: s3, bucket: mail, prefix: strict/}
"""
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    settings = settings_for(tmp_path, STRICT_RULES, tls_self_signed=True)
    with in_process(settings) as running:
        yield running


def smtp(running: Running) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", running.port, timeout=10)
    client.ehlo("client.test")
    return client


class Raw:
    """A byte-exact SMTP client: what is sent is what the server reads."""

    def __init__(self, port: int, source: str | None = None) -> None:
        address = (source, 0) if source else None
        self.sock = socket.create_connection(("127.0.0.1", port), 10, address)
        self.buffer = b""

    def reply(self) -> str:
        """One whole reply (all lines of a multi-line one)."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "\n".join(lines) if lines else "<closed>"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode()
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def test_ehlo_advertises_the_extensions(receiver: Running) -> None:
    client = smtp(receiver)
    features = client.esmtp_features
    for keyword in ("size", "pipelining", "8bitmime", "starttls", "enhancedstatuscodes"):
        assert keyword in features, features
    assert features["size"] == str(40 * 1024 * 1024)
    assert "auth" not in features
    client.quit()


def test_message_is_queued_stored_and_byte_identical(receiver: Running) -> None:
    client = smtp(receiver)
    client.mail("alice@sender.example")
    assert client.rcpt("bob@example.com") == (250, b"2.1.5 Ok")
    code, text = client.data(MESSAGE)
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    message_id = text.decode().rsplit(" ", 1)[1]
    client.quit()
    stored = receiver.wait_stored(1)
    assert list(stored) == [message_id]
    content = stored[message_id]
    # The original message follows the prepended headers byte for byte.
    assert content.endswith(MESSAGE)
    head = content[: len(content) - len(MESSAGE)].decode()
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if line and line[0] not in " \t"]
    assert names == [
        "X-Inbound-Test",
        "Return-Path",
        "Received",
        "X-SES-Spam-Verdict",
        "X-SES-Virus-Verdict",
        "Received-SPF",
        "Authentication-Results",
    ]
    assert "Return-Path: <alice@sender.example>" in head
    assert f"id {message_id}" in head
    receiver.wait_idle()
    assert receiver.queued() == []


def test_recipient_replies(receiver: Running) -> None:
    client = smtp(receiver)
    client.mail("alice@sender.example")
    assert client.rcpt("nobody@strict.example")[0:1] == (550,)
    assert client.rcpt("nobody@strict.example")[1].startswith(b"5.1.1")
    assert client.rcpt("x@elsewhere.example")[1].startswith(b"5.7.1")
    assert client.rcpt("secure@strict.example") == (
        530,
        b"5.7.0 Must issue a STARTTLS command first",
    )
    assert client.rcpt("known@strict.example")[0] == 250
    client.quit()


def test_starttls_and_a_tls_policy_require_rule(receiver: Running) -> None:
    client = smtp(receiver)
    context = ssl.create_default_context(cafile=receiver.data_dir / "tls" / "self-signed.crt")
    context.check_hostname = False
    assert client.starttls(context=context)[0] == 220
    client.ehlo("client.test")
    assert "starttls" not in client.esmtp_features
    client.mail("alice@sender.example")
    assert client.rcpt("secure@strict.example")[0] == 250
    assert client.data(MESSAGE)[0] == 250
    client.quit()
    stored = receiver.wait_stored(1, prefix="secure/")
    [content] = stored.values()
    assert b"with ESMTPS id" in content


def test_in_session_bounce_stores_nothing(receiver: Running) -> None:
    client = smtp(receiver)
    client.mail("alice@sender.example")
    client.rcpt("virus@example.com")
    code, text = client.data(MESSAGE)
    assert (code, text) == (550, b"5.7.1 No viruses")
    client.quit()
    assert receiver.queued() == []
    assert not (receiver.data_dir / "s3").exists()


def test_too_many_recipients(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_recipients=3)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        client = smtp(running)
        client.mail("alice@sender.example")
        for n in range(3):
            assert client.rcpt(f"user{n}@example.com")[0] == 250
        assert client.rcpt("user3@example.com") == (452, b"4.5.3 Too many recipients")
        assert client.data(MESSAGE)[0] == 250
        client.quit()


def test_message_size_limit(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_message_size=2000)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        client = smtp(running)
        assert client.esmtp_features["size"] == "2000"
        # Declared too large: refused at MAIL FROM (RFC 1870).
        code, _ = client.mail("alice@sender.example", ["SIZE=5000"])
        assert code == 552
        client.rset()
        client.mail("alice@sender.example")
        client.rcpt("bob@example.com")
        code, text = client.data(MESSAGE + (b"y" * 900 + b"\r\n") * 3)
        assert (code, text[:5]) == (552, b"5.3.4")
        client.quit()
        assert running.queued() == []


def test_line_length_limit(receiver: Running) -> None:
    client = smtp(receiver)
    client.mail("alice@sender.example")
    client.rcpt("bob@example.com")
    code, text = client.data(MESSAGE + b"z" * 1200 + b"\r\n")
    assert (code, text[:5]) == (500, b"5.5.2")
    # The session goes on.
    assert client.noop()[0] == 250
    client.quit()


def test_bare_lf_is_refused(receiver: Running) -> None:
    raw = Raw(receiver.port)
    assert raw.reply().startswith("220 ")
    assert raw.command("EHLO client.test").startswith("250")
    assert raw.command("MAIL FROM:<alice@sender.example>").startswith("250 2.1.0")
    assert raw.command("RCPT TO:<bob@example.com>").startswith("250 2.1.5")
    assert raw.command("DATA").startswith("354")
    raw.send(b"Subject: x\r\n\r\nline with bare LF\nmore\r\n.\r\n")
    assert raw.reply() == "550 5.5.2 Bare CR or LF in message is not allowed"
    assert raw.command("QUIT").startswith("221")
    raw.close()
    assert receiver.queued() == []


def test_connection_refused_by_filter(tmp_path: Path) -> None:
    rules = RULES.replace(
        "rules:\n", "filters:\n  - {name: nobody, policy: block, cidr: 0.0.0.0/0}\nrules:\n"
    )
    with in_process(settings_for(tmp_path, rules)) as running:
        raw = Raw(running.port)
        assert raw.reply() == "554 5.7.1 Access denied"
        assert raw.reply() == "<closed>"
        raw.close()


def test_connection_limits(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_connections=5, max_connections_per_ip=2)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        first, second = Raw(running.port), Raw(running.port)
        assert first.reply().startswith("220 ")
        assert second.reply().startswith("220 ")
        third = Raw(running.port)
        assert third.reply() == "421 4.7.0 Too many connections, try again later"
        first.command("QUIT")
        first.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fourth = Raw(running.port)
            greeting = fourth.reply()
            fourth.close()
            if greeting.startswith("220 "):
                break
            time.sleep(0.05)
        assert greeting.startswith("220 ")
        second.close()
        third.close()


def test_command_timeout_says_421(tmp_path: Path) -> None:
    limits = ReceiverLimits(command_timeout=0.5)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        raw = Raw(running.port)
        assert raw.reply().startswith("220 ")
        assert raw.reply() == "421 4.4.2 Timeout, closing connection"
        assert raw.reply() == "<closed>"
        raw.close()


def test_internal_error_is_451_without_details(
    receiver: Running, monkeypatch: pytest.MonkeyPatch
) -> None:

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(Intake, "end_of_data", broken)
    client = smtp(receiver)
    client.mail("alice@sender.example")
    client.rcpt("bob@example.com")
    code, text = client.data(MESSAGE)
    assert (code, text) == (451, b"4.3.0 Temporary server error, please try again later")
    client.quit()


def test_spool_that_cannot_write_answers_451(receiver: Running) -> None:
    queue = receiver.data_dir / "spool" / "queue"
    queue.rmdir()
    queue.write_text("not a directory")
    client = smtp(receiver)
    client.mail("alice@sender.example")
    client.rcpt("bob@example.com")
    code, text = client.data(MESSAGE)
    assert (code, text[:5]) == (451, b"4.3.0")
    client.quit()


def test_null_sender_and_aiosmtplib(receiver: Running) -> None:
    async def send() -> tuple[dict[str, object], str]:
        message = email.message_from_bytes(MESSAGE)
        return await aiosmtplib.send(  # type: ignore[return-value]
            message,
            hostname="127.0.0.1",
            port=receiver.port,
            sender="",
            recipients=["bob@example.com"],
            start_tls=False,
        )

    errors, text = asyncio.run(send())
    assert errors == {}
    assert "queued as" in text
    [content] = receiver.wait_stored(1).values()
    assert b"Return-Path: <>\r\n" in content


def test_pipelined_transaction(receiver: Running) -> None:
    raw = Raw(receiver.port)
    raw.reply()
    raw.command("EHLO client.test")
    raw.send(
        b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
    )
    assert raw.reply().startswith("250 2.1.0")
    assert raw.reply().startswith("250 2.1.5")
    assert raw.reply().startswith("550 5.7.1")
    assert raw.reply().startswith("354")
    raw.send(MESSAGE + b".\r\n")
    assert raw.reply().startswith("250 2.0.0 Ok: queued as")
    raw.command("QUIT")
    raw.close()


NOTIFY_RULES = """\
version: 1
name: notify
domains: [example.com]
rules:
  - name: all
    actions:
      - {type: s3, bucket: mail, prefix: in/, topic_arn: "arn:aws:sns:us-east-1:123456789012:stored"}
      - {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:content", encoding: base64}
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:audit"}
"""


def test_notifications_events_and_envelopes_have_the_ses_shape(tmp_path: Path) -> None:
    with in_process(settings_for(tmp_path, NOTIFY_RULES)) as running:
        client = smtp(running)
        client.mail("alice@sender.example")
        client.rcpt("bob@example.com")
        message_id = client.data(MESSAGE)[1].decode().rsplit(" ", 1)[1]
        client.quit()
        [stored] = running.wait_stored(1).values()
        running.wait_idle()
    sns = running.data_dir / "sns"
    [stored_line] = (sns / "stored.jsonl").read_text().splitlines()
    [content_line] = (sns / "content.jsonl").read_text().splitlines()
    for line, topic in ((stored_line, "stored"), (content_line, "content")):
        envelope = json.loads(line)
        assert envelope["Type"] == "Notification"
        assert envelope["TopicArn"] == f"arn:aws:sns:us-east-1:123456789012:{topic}"
        assert envelope["Subject"] == "Amazon SES Email Receipt Notification"
    alert = json.loads(json.loads(stored_line)["Message"])
    assert "content" not in alert
    assert alert["notificationType"] == "Received"
    assert alert["mail"]["messageId"] == message_id
    assert alert["mail"]["source"] == "alice@sender.example"
    assert alert["mail"]["commonHeaders"]["subject"] == "hello"
    assert alert["receipt"]["recipients"] == ["bob@example.com"]
    assert alert["receipt"]["action"] == {
        "type": "S3",
        "topicArn": "arn:aws:sns:us-east-1:123456789012:stored",
        "bucketName": "mail",
        "objectKeyPrefix": "in/",
        "objectKey": f"in/{message_id}",
    }
    published = json.loads(json.loads(content_line)["Message"])
    assert published["receipt"]["action"]["encoding"] == "BASE64"
    # The content is the stored message, byte for byte.
    assert base64.b64decode(published["content"]) == stored
    [event_line] = (running.data_dir / "lambda" / "audit.jsonl").read_text().splitlines()
    event = json.loads(event_line)
    [record] = event["Records"]
    assert (record["eventSource"], record["eventVersion"]) == ("aws:ses", "1.0")
    assert record["ses"]["mail"]["messageId"] == message_id
    assert record["ses"]["receipt"]["action"]["invocationType"] == "Event"
    assert "content" not in record["ses"]


def test_total_connection_limit_counts_every_client(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_connections=2, max_connections_per_ip=5)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        first, second = Raw(running.port), Raw(running.port)
        assert first.reply().startswith("220 ")
        assert second.reply().startswith("220 ")
        other = Raw(running.port, source="127.0.0.2")  # another client IP on loopback
        assert other.reply() == "421 4.7.0 Too many connections, try again later"
        for raw in (first, second, other):
            raw.close()


def test_sns_action_bounces_messages_over_150_kb(tmp_path: Path) -> None:
    rules = NOTIFY_RULES.replace("encoding: base64", "encoding: utf-8")
    big = MESSAGE + (b"x" * 998 + b"\r\n") * 160
    with in_process(settings_for(tmp_path, rules)) as running:
        client = smtp(running)
        client.mail("alice@sender.example")
        client.rcpt("bob@example.com")
        message_id = client.data(big)[1].decode().rsplit(" ", 1)[1]
        client.quit()
        running.wait_stored(1)
        running.wait_idle()
    assert not (running.data_dir / "sns" / "content.jsonl").exists()
    [bounce] = (running.data_dir / "bounce" / "outbox.jsonl").read_text().splitlines()
    record = json.loads(bounce)
    assert record["message_id"] == message_id
    assert record["to"] == "alice@sender.example"
    assert (record["smtp_reply_code"], record["status_code"]) == ("552", "5.3.4")


def test_sns_oversize_can_publish_without_content(tmp_path: Path) -> None:
    big = MESSAGE + (b"x" * 998 + b"\r\n") * 160
    with in_process(settings_for(tmp_path, NOTIFY_RULES, sns_oversize="omit-content")) as running:
        client = smtp(running)
        client.mail("alice@sender.example")
        client.rcpt("bob@example.com")
        message_id = client.data(big)[1].decode().rsplit(" ", 1)[1]
        client.quit()
        running.wait_stored(1)
        running.wait_idle()
    [line] = (running.data_dir / "sns" / "content.jsonl").read_text().splitlines()
    notification = json.loads(json.loads(line)["Message"])
    assert notification["mail"]["messageId"] == message_id
    assert "content" not in notification
    assert not (running.data_dir / "bounce").exists()
