"""The receiver's own SMTP engine on a raw socket: how it ends a connection, pipelining, and a
client that does not read its replies.

When the server closes a connection (QUIT, a limit, a timeout), every reply it wrote must reach
the client, even while the client is still sending: a close with unread input makes the kernel
send a reset, which throws away the replies not yet delivered (RFC 5321 §4.1.1.10: the server
closes only after sending its reply; the client must be able to read it).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.receive.limits import ReceiverLimits
from tests.integration.receiver import Running, in_process, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

NOOPS = 50_000


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    limits = ReceiverLimits(max_junk_commands=10 * NOOPS)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        yield running


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    def send() -> None:
        # The server may close first: what matters is what the client reads.
        with contextlib.suppress(OSError):
            sock.sendall(data)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def read_to_the_end(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sent, and whether the connection ended in a reset."""
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(received), True
        if not chunk:
            return bytes(received), False
        received += chunk


def test_every_reply_is_read_although_the_client_sends_on_after_quit(receiver: Running) -> None:
    """50,000 pipelined NOOPs whose replies the client does not read at first, a QUIT, then
    more input: the 221 and all 50,000 replies arrive, and the connection ends with a FIN."""
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=30)
    try:
        assert sock.recv(1024).startswith(b"220 ")
        sender = send_in_background(sock, b"NOOP\r\n" * NOOPS + b"QUIT\r\n" + b"x" * 500_000)
        time.sleep(0.5)  # the replies fill both socket buffers
        received, reset = read_to_the_end(sock)
        sender.join(30)
    finally:
        sock.close()
    lines = received.split(b"\r\n")
    assert lines.count(b"250 2.0.0 OK") == NOOPS
    assert b"221 2.0.0 Bye" in lines
    assert not reset


def test_the_reply_of_a_limit_is_read_although_the_client_sends_on(tmp_path: Path) -> None:
    """The junk-command limit: its 421 arrives after the replies before it, then a FIN."""
    limits = ReceiverLimits(max_junk_commands=NOOPS // 2)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=30)
        try:
            assert sock.recv(1024).startswith(b"220 ")
            sender = send_in_background(sock, b"NOOP\r\n" * NOOPS + b"x" * 500_000)
            time.sleep(0.5)
            received, reset = read_to_the_end(sock)
            sender.join(30)
        finally:
            sock.close()
    lines = received.split(b"\r\n")
    assert lines.count(b"250 2.0.0 OK") == NOOPS // 2
    assert lines[-2] == b"421 4.7.0 Too many commands without a transaction"
    assert not reset


def test_pipelined_transactions_are_answered_in_order(receiver: Running) -> None:
    """RFC 2920: a whole transaction in one write, twice, and the session goes on."""
    transaction = (
        b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\n"
        b"RCPT TO:<nobody@not-ours.example>\r\nDATA\r\n"
    )
    body = b"Subject: pipelined\r\n\r\n..dot\r\n.\r\n"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n" + transaction)
        replies = b""
        while not replies.endswith(b"<CR><LF>.<CR><LF>\r\n"):
            chunk = sock.recv(65536)
            assert chunk, replies
            replies += chunk
        sock.sendall(body + transaction)
        while replies.count(b"354 ") < 2:
            chunk = sock.recv(65536)
            assert chunk, replies
            replies += chunk
        sock.sendall(body + b"QUIT\r\n")
        received, reset = read_to_the_end(sock)
    codes = [line[:3] for line in (replies + received).split(b"\r\n") if line[3:4] == b" "]
    transaction_codes = [b"250", b"250", b"550", b"354"]
    assert codes == [b"250", *transaction_codes, b"250", *transaction_codes, b"250", b"221"]
    assert not reset
    stored = list(receiver.wait_stored(2).values())
    assert all(message.endswith(b"\r\n.dot\r\n") for message in stored)


def test_a_client_that_half_closes_after_data_is_let_go(receiver: Running) -> None:
    """DATA then EOF, with no body: the message is abandoned and the connection ends now,
    not after --data-timeout (10 minutes) of waiting for bytes that cannot come."""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
        assert sock.recv(1024).startswith(b"220 ")
        sock.sendall(
            b"EHLO client.test\r\nMAIL FROM:<a@sender.example>\r\n"
            b"RCPT TO:<bob@example.com>\r\nDATA\r\nSubject: cut\r\n"
        )
        sock.shutdown(socket.SHUT_WR)
        received, reset = read_to_the_end(sock)  # a timeout here fails the test
    assert received.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert not reset
    assert receiver.stored() == {}


def test_a_shutdown_during_the_handshake_sends_no_plaintext(tmp_path: Path) -> None:
    """SIGTERM's path (every session told to shut down) while a client is between `220 Ready
    to start TLS` and its ClientHello: the socket then speaks TLS, so the 421 that an idle
    session gets would be plaintext inside the handshake. The connection just ends."""
    with in_process(settings_for(tmp_path, tls_self_signed=True)) as running:
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        assert sock.recv(1024).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        replies = b""
        while not replies.endswith(b"250 ENHANCEDSTATUSCODES\r\n"):
            replies += sock.recv(65536)
        sock.sendall(b"STARTTLS\r\n")
        assert sock.recv(1024) == b"220 2.0.0 Ready to start TLS\r\n"
    try:
        received, _ = read_to_the_end(sock)
    finally:
        sock.close()
    assert received == b""


def test_a_client_that_half_closes_after_pipelining_gets_every_reply(receiver: Running) -> None:
    """50,000 NOOPs and an EOF, the replies read only afterwards: while the client does not
    read, the receiver stops reading too; its EOF ends the session once all are answered."""
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=30)
    try:
        assert sock.recv(1024).startswith(b"220 ")

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(b"NOOP\r\n" * NOOPS)
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        time.sleep(0.5)
        received, reset = read_to_the_end(sock)
        sender.join(30)
    finally:
        sock.close()
    assert received.split(b"\r\n").count(b"250 2.0.0 OK") == NOOPS
    assert not reset
