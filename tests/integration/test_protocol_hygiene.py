"""Protocol hygiene of the session (issue 11, item 9), over raw sockets: malformed addresses,
AUTH on an MX, control characters in replies, <Postmaster>, closed TLS transports, and a client
that drops mid-DATA. What is asserted is what a client or an operator sees: replies, stored
objects, log records."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.receiver import Running, in_process, settings_for, start_child
from tests.integration.wire import Wire

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MESSAGE = b"From: alice@sender.example\r\nSubject: hello\r\n\r\nHello.\r\n"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    with in_process(settings_for(tmp_path, tls_self_signed=True)) as running:
        yield running


def greeted(running: Running) -> Wire:
    client = Wire(running.port)
    assert (client.reply() or "").startswith("220 ")
    assert (client.command("EHLO client.test") or "").startswith("250-")
    return client


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records an operator would read as a fault: errors, and asyncio's own complaints."""
    return [
        f"{r.name} {r.levelname} {r.getMessage()} {(r.exc_info or (None, None))[1]!r}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or (r.name == "asyncio" and r.levelno >= logging.WARNING)
    ]


def test_malformed_addresses_get_501(receiver: Running, caplog: pytest.LogCaptureFixture) -> None:
    client = greeted(receiver)
    try:
        for sender in ("a@", "<a@>", '""@'):
            assert client.command(f"MAIL FROM:{sender}") == "501 5.1.7 Bad sender address syntax"
        assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
        for recipient in ("x@", "<x@>", "<@>"):
            reply = client.command(f"RCPT TO:{recipient}")
            assert reply == "501 5.1.3 Bad recipient address syntax"
        assert client.command("RCPT TO:<bob@example.com>") == "250 2.1.5 Ok"
        assert client.command("QUIT") == "221 2.0.0 Bye"
    finally:
        client.close()
    assert problems(caplog) == []


def test_auth_is_not_implemented(receiver: Running) -> None:
    client = Wire(receiver.port)
    try:
        assert (client.reply() or "").startswith("220 ")
        assert client.command("AUTH PLAIN AGJvYgBzZWNyZXQ=") == "502 5.5.1 Command not implemented"
        assert (client.command("EHLO client.test") or "").startswith("250-")
        for line in ("AUTH PLAIN AGJvYgBzZWNyZXQ=", "AUTH LOGIN", "AUTH"):
            assert client.command(line) == "502 5.5.1 Command not implemented"
        assert client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
        assert client.starttls(receiver.data_dir / "tls" / "self-signed.crt")
        reply = client.command("EHLO client.test") or ""
        assert "AUTH" not in reply
        assert client.command("AUTH PLAIN AGJvYgBzZWNyZXQ=") == "502 5.5.1 Command not implemented"
        assert client.command("QUIT") == "221 2.0.0 Bye"
    finally:
        client.close()


@pytest.mark.parametrize(
    "line",
    [b"FOO\rBAR", b"FOO\rRCPT TO:<x@example.com>", b"NUL\x00HERE", b"ESC\x1b[2J", b"DEL\x7f"],
    ids=["bare-cr", "bare-cr-command", "nul", "escape", "del"],
)
def test_no_control_character_is_echoed(receiver: Running, line: bytes) -> None:
    client = greeted(receiver)
    try:
        client.send(line + b"\r\n")
        reply = client.reply() or "<closed>"
        assert reply.startswith("500 5.5.2 "), reply
        assert not CONTROL.search(reply), repr(reply)
        assert client.buffer == b""
        assert client.command("NOOP") == "250 2.0.0 OK"  # one reply: the line was not split
    finally:
        client.close()


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"X" * 500, "500 5.5.2 "),
        ("VRFY >\u00fc".encode(), "502 5.5.1 "),
        (b"VRFY >" + b"a" * 490, "502 5.5.1 "),
    ],
    ids=["long-unknown-command", "vrfy-utf8", "long-vrfy"],
)
def test_echoed_text_keeps_the_reply_ascii_and_within_512_octets(
    receiver: Running, line: bytes, code: str
) -> None:
    client = greeted(receiver)
    try:
        client.send(line + b"\r\n")
        reply = client.reply() or "<closed>"
        assert reply.startswith(code), reply
        assert reply.isascii(), repr(reply)
        assert reply.isprintable(), repr(reply)
        assert len(reply) + 2 <= 512, len(reply)  # RFC 5321 §4.5.3.1.5, CRLF included
        assert client.command("NOOP") == "250 2.0.0 OK"
    finally:
        client.close()


def test_postmaster_without_a_domain_is_accepted(receiver: Running) -> None:
    """RFC 5321 §4.5.1: <Postmaster> is postmaster@ the rule set's first domain (README)."""
    client = greeted(receiver)
    try:
        assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
        assert client.command("RCPT TO:<Postmaster>") == "250 2.1.5 Ok"
        assert client.command("DATA") == "354 End data with <CR><LF>.<CR><LF>"
        client.send(MESSAGE + b".\r\n")
        reply = client.reply() or ""
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
        assert client.command("QUIT") == "221 2.0.0 Bye"
    finally:
        client.close()
    message_id = reply.rsplit(" ", 1)[1]
    stored = receiver.wait_stored(1)
    assert list(stored) == [message_id]
    assert b"\tfor <postmaster@example.com>; " in stored[message_id]


def test_a_closed_tls_transport_is_not_an_error(
    receiver: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosmtpd closes the session's transport on its sixth unknown command and reads on; a TLS
    transport closed twice used to fail that read with AttributeError (`session.failed`)."""
    for _ in range(5):
        client = greeted(receiver)
        try:
            assert client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
            assert client.starttls(receiver.data_dir / "tls" / "self-signed.crt")
            assert (client.command("EHLO client.test") or "").startswith("250-")
            # One write: read past the limit of the stream reader, so it pauses the transport.
            client.send(b"BOGUS\r\n" * 6 + b"x" * 3000 + b"\r\nNOOP\r\n")
            replies = client.drain()
        finally:
            client.close()
        assert replies[-1].startswith("421 4.7.0 "), replies
    receiver.wait_idle()
    assert problems(caplog) == []


def test_client_dropping_mid_data_leaves_only_json_in_the_log(tmp_path: Path) -> None:
    child = start_child(tmp_path, "--data-timeout", "1s", "--command-timeout", "1s")
    try:
        gone = Wire(child.port)  # goes away mid-DATA
        silent = Wire(child.port)  # stays, and says nothing more
        for client in (gone, silent):
            assert (client.reply() or "").startswith("220 ")
            assert (client.command("EHLO client.test") or "").startswith("250-")
            assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
            assert client.command("RCPT TO:<bob@example.com>") == "250 2.1.5 Ok"
            assert client.command("DATA") == "354 End data with <CR><LF>.<CR><LF>"
            client.send(b"Subject: cut short\r\n\r\nhalf a message\r\n")
        gone.close()
        assert silent.reply() == "421 4.4.2 Timeout, closing connection"
        assert silent.reply() is None
        silent.close()
        # Both sessions' timers have run out (data, then command timeout) by this deadline; a
        # timer that outlived its session used to fail with a plain-text AssertionError.
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            assert_json_only(child.log)
            time.sleep(0.1)
        assert_json_only(child.log)
    finally:
        child.kill()
    assert not (child.data_dir / "spool" / "queue").is_dir() or not any(
        (child.data_dir / "spool" / "queue").iterdir()
    )


def assert_json_only(log: Path) -> None:
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line in the log: {line!r}") from None
        assert isinstance(entry, dict), line
        assert entry.get("level") not in {"error", "critical"}, line
