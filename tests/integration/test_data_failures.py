"""Failures inside DATA (SPEC section 7, "Hostile input"): a full disk and an oversized header
block are answered once, after the end of data, and no DATA byte is ever read as a command.

The full disk is real: a small tmpfs mounted as the receiver's data directory (tests run as
root in CI; under CI=true a failed mount fails the test, elsewhere it is skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.receiver import Running, in_process, settings_for
from tests.integration.wire import Wire
from tests.tmpfs import fill, small_tmpfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# What a client pipelines as its message: commands only a desynchronised session would run.
SMUGGLED = (
    b"MAIL FROM:<admin@trusted.example>\r\n"
    b"RCPT TO:<bob@example.com>\r\n"
    b"DATA\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"SMUGGLED MESSAGE BODY\r\n"
)
# Valid commands, so that a session reading them as commands keeps going up to SMUGGLED.
FILLER_LINE = b"NOOP this line is data, and a command to a session that lost DATA\r\n"
MESSAGE = b"From: alice@sender.example\r\nSubject: hello\r\n\r\nHello.\r\n"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "data", 4 * 1024 * 1024) as mount:
        yield mount


def begin(client: Wire) -> None:
    assert (client.reply() or "").startswith("220 ")
    assert (client.command("EHLO client.test") or "").startswith("250-")
    assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
    assert client.command("RCPT TO:<bob@example.com>") == "250 2.1.5 Ok"
    assert client.command("DATA") == "354 End data with <CR><LF>.<CR><LF>"


def send_message(running: Running, message: bytes) -> str:
    client = Wire(running.port)
    try:
        begin(client)
        client.send(message + b".\r\n")
        reply = client.reply() or "<closed>"
        assert client.command("QUIT") == "221 2.0.0 Bye"
        return reply
    finally:
        client.close()


def test_full_disk_inside_data_is_answered_after_the_end_of_data(tmpfs: Path) -> None:
    with in_process(settings_for(tmpfs.parent, data_dir=tmpfs)) as running:
        # Room for the small smuggled message, not for the carrier: the carrier's write fails
        # mid-stream, and freeing its space used to let the smuggled one through.
        filler = fill(tmpfs, leave=256 * 1024)
        carrier = b"Subject: carrier\r\n\r\n" + FILLER_LINE * (1024 * 1024 // len(FILLER_LINE))
        client = Wire(running.port)
        try:
            begin(client)
            client.send(carrier + SMUGGLED + b".\r\nQUIT\r\n")
            replies = client.drain()
        finally:
            client.close()
        # Exactly one reply to DATA, after its end; then QUIT's. No 250/354 for a smuggled line.
        assert replies == [
            "451 4.3.0 Temporary server error, please try again later",
            "221 2.0.0 Bye",
        ]
        running.wait_idle()
        assert running.queued() == []
        assert running.stored() == {}
        # Space again: the next message is accepted and delivered.
        filler.unlink()
        reply = send_message(running, MESSAGE)
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
        message_id = reply.rsplit(" ", 1)[1]
        stored = running.wait_stored(1)
        assert list(stored) == [message_id]
        assert stored[message_id].endswith(MESSAGE)


def test_header_block_over_the_limit_gets_552(tmp_path: Path) -> None:
    header = b"".join(b"X-Pad-%07d: %s\r\n" % (i, b"h" * 80) for i in range(2 * 1024 * 1024 // 96))
    assert len(header) > 2 * 1024 * 1024 - 200
    with in_process(settings_for(tmp_path)) as running:
        client = Wire(running.port)
        try:
            begin(client)
            client.send(header + b"\r\nbody\r\n.\r\n")
            assert client.reply() == (
                "552 5.3.4 Message header size exceeds fixed maximum header size"
            )
            # The session goes on: the next message on the same connection is stored.
            assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
            assert client.command("RCPT TO:<bob@example.com>") == "250 2.1.5 Ok"
            assert client.command("DATA") == "354 End data with <CR><LF>.<CR><LF>"
            client.send(MESSAGE + b".\r\n")
            reply = client.reply() or "<closed>"
            assert reply.startswith("250 2.0.0 Ok: queued as "), reply
            assert client.command("QUIT") == "221 2.0.0 Bye"
        finally:
            client.close()
        stored = running.wait_stored(1)
        assert list(stored) == [reply.rsplit(" ", 1)[1]]
        assert b"X-Pad-" not in stored[reply.rsplit(" ", 1)[1]]
