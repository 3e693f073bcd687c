"""STARTTLS with plaintext commands pipelined behind it (SPEC section 7, "Hostile input"): 0 B to
1 MB of EHLO/MAIL/RCPT/DATA for a `tls_policy: require` recipient, in the same write as STARTTLS.

None of it may be answered as a command or stored, and only a completed handshake makes the
session TLS. The command timeout is short: aiosmtpd's STARTTLS, stalled by a paused socket,
used to run the buffered commands once that timeout closed the connection mid-handshake.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.receive.limits import ReceiverLimits
from tests.integration.receiver import Running, in_process, settings_for
from tests.integration.wire import Wire

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SIZES = {"0B": 0, "100B": 100, "2KB": 2 * 1024, "64KB": 64 * 1024, "1MB": 1024 * 1024}
# Up to this much, the plaintext arrives with STARTTLS and the handshake must then succeed.
SURVIVES = 2 * 1024
INJECTED = (
    b"EHLO evil.example\r\n",
    b"MAIL FROM:<evil@attacker.example>\r\n",
    b"RCPT TO:<secure@example.com>\r\n",
    b"DATA\r\n",
    b"Subject: injected before the handshake\r\n",
    b"\r\n",
    b"INJECTED BODY\r\n",
    b".\r\n",
)
LEGIT = b"From: alice@sender.example\r\nSubject: after a real handshake\r\n\r\nHello.\r\n"


def plaintext_commands(size: int) -> bytes:
    """`size` bytes of whole command lines: the injected transaction over and over."""
    out = bytearray()
    index = 0
    while True:
        line = INJECTED[index % len(INJECTED)]
        if len(out) + len(line) > size:
            break
        out += line
        index += 1
    rest = size - len(out)
    out += b"NOOP" + b"x" * (rest - 6) + b"\r\n" if rest >= len(b"NOOP\r\n") else b"x" * rest
    return bytes(out)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    limits = ReceiverLimits(command_timeout=3.0)
    with in_process(settings_for(tmp_path, tls_self_signed=True, limits=limits)) as running:
        yield running


def ehlo(client: Wire) -> str:
    greeting = client.reply() or "<closed>"
    assert greeting.startswith("220 "), greeting
    reply = client.command("EHLO client.test") or "<closed>"
    assert reply.startswith("250-"), reply
    return reply


def legit_transaction(client: Wire, running: Running) -> None:
    """In TLS, a `require` recipient is accepted and a message queued."""
    reply = client.command("EHLO client.test") or "<closed>"
    assert reply.startswith("250-mx.test\n"), reply
    assert "STARTTLS" not in reply
    assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
    assert client.command("RCPT TO:<secure@example.com>") == "250 2.1.5 Ok"
    assert client.command("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    client.send(LEGIT + b".\r\n")
    queued = client.reply() or "<closed>"
    assert queued.startswith("250 2.0.0 Ok: queued as "), queued
    assert client.command("QUIT") == "221 2.0.0 Bye"


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_plaintext_after_starttls_is_never_a_command(receiver: Running, size: int) -> None:
    cafile = receiver.data_dir / "tls" / "self-signed.crt"
    client = Wire(receiver.port)
    try:
        assert "STARTTLS" in ehlo(client)
        client.send(b"STARTTLS\r\n" + plaintext_commands(size))
        ready = client.reply()
        if ready is None:
            # A connection reset by the server can discard its 220 before it is read.
            assert size > SURVIVES, "closed without a reply to STARTTLS"
            survived = False
        else:
            assert ready == "220 2.0.0 Ready to start TLS"
            # Raises if anything but TLS records follows: a plaintext reply to an injected line.
            survived = client.starttls(cafile)
        assert survived or size > SURVIVES, "the handshake failed after a small plaintext"
        if survived:
            legit_transaction(client, receiver)
        else:
            assert client.closed
    finally:
        client.close()
    if not survived:  # the same client again, on a new connection
        client = Wire(receiver.port)
        try:
            ehlo(client)
            assert client.command("STARTTLS") == "220 2.0.0 Ready to start TLS"
            assert client.starttls(cafile)
            legit_transaction(client, receiver)
        finally:
            client.close()
    # The injected transaction, had it run, was spooled before the legitimate one.
    receiver.wait_stored(1, prefix="secure/")
    receiver.wait_idle()
    for prefix in ("secure/", "in/"):  # both rules match secure@example.com
        stored = receiver.stored(prefix)
        assert len(stored) == 1, [re.findall(rb"Subject: [^\r]*", c) for c in stored.values()]
        [content] = stored.values()
        assert content.endswith(LEGIT)
        assert b"with ESMTPS id" in content
