"""What one session may spend (SPEC section 7): commands that do not advance a transaction
(`--max-junk-commands`, then 421 4.7.0) and its lifetime (`--max-session-time`, then 421
4.4.2), over raw sockets against a real receiver; that a long, legitimate session with
several messages is not affected by either; and that a client's half-close ends a session only
once the command in progress has been answered."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inbound.intake import Intake
from inbound.receive.limits import ReceiverLimits
from tests.integration.receiver import (
    DEADLINE,
    Running,
    in_process,
    settings_for,
    start_child,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

JUNK_LIMIT = "421 4.7.0 Too many commands without a transaction"
LIFETIME = "421 4.4.2 Session time limit exceeded, closing connection"
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as (\S+)$")
MESSAGE = b"From: a@sender.example\r\nTo: bob@example.com\r\nSubject: s\r\n\r\nbody\r\n.\r\n"


class Raw:
    """A byte-exact SMTP client: what is sent is what the server reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.buffer = b""

    def reply(self) -> str:
        """One whole reply (the lines of a multi-line one joined by newlines), or <closed>."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:  # a command sent as the server closed: its RST
                    chunk = b""
                if not chunk:
                    return "\n".join(lines) if lines else "<closed>"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(lines[-1]) < 4 or lines[-1][3] != "-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def greeted(self) -> Raw:
        assert self.reply().startswith("220 ")
        assert self.command("EHLO client.test").startswith("250-")
        return self

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    with in_process(settings_for(tmp_path)) as running:
        yield running


def test_the_101st_junk_command_gets_421_and_the_connection_closes(receiver: Running) -> None:
    raw = Raw(receiver.port).greeted()
    for _ in range(100):
        assert raw.command("NOOP") == "250 2.0.0 OK"
    assert raw.command("NOOP") == JUNK_LIMIT
    assert raw.reply() == "<closed>"
    raw.close()


def test_commands_pipelined_after_the_limit_are_not_run(receiver: Running) -> None:
    raw = Raw(receiver.port).greeted()
    raw.sock.sendall(
        b"RSET\r\n" * 50
        + b"HELP\r\n" * 50
        + b"VRFY <bob@example.com>\r\nMAIL FROM:<a@sender.example>\r\n"
        + b"RCPT TO:<bob@example.com>\r\nDATA\r\n"
        + MESSAGE
    )
    replies = [raw.reply() for _ in range(101)]
    assert all(r.startswith("250 ") for r in replies[:50]), replies[:50]  # RSET
    assert all(r.startswith("214 ") for r in replies[50:100]), replies[50:100]  # HELP
    assert replies[100] == JUNK_LIMIT
    assert raw.reply() == "<closed>"
    raw.close()
    assert receiver.stored() == {}


def test_refused_and_repeated_commands_are_junk_too(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_junk_commands=4)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        raw = Raw(running.port).greeted()
        assert raw.command("EHLO client.test").startswith("250-")  # 1: a second greeting
        assert raw.command("MAIL FROM:<a@sender.example>").startswith("250 ")  # advances
        assert raw.command("MAIL FROM:<b@sender.example>").startswith("503 ")  # 2
        assert raw.command("RCPT TO:<x@not-ours.example>").startswith("550 ")  # 3
        assert raw.command("RCPT TO:<bob@example.com>").startswith("250 ")  # advances
        assert raw.command("DATA extra").startswith("501 ")  # 4
        # The fifth: its own reply, then the limit's.
        assert raw.command("RCPT TO:<y@not-ours.example>").startswith("550 ")
        assert raw.reply() == JUNK_LIMIT
        assert raw.reply() == "<closed>"
        raw.close()


def test_a_long_session_delivering_messages_is_not_limited(tmp_path: Path) -> None:
    """Junk between messages never adds up: the count starts again after each DATA. The
    session lasts longer than the limit's commands would without messages."""
    limits = ReceiverLimits(max_junk_commands=3, max_session_time=30.0)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        raw = Raw(running.port).greeted()
        queued = []
        for n in range(8):
            assert raw.command("NOOP").startswith("250 ")
            assert raw.command("RSET").startswith("250 ")
            assert raw.command(f"MAIL FROM:<a{n}@sender.example>").startswith("250 ")
            assert raw.command("RCPT TO:<bob@example.com>").startswith("250 ")
            assert raw.command("VRFY bob").startswith("252 ")
            assert raw.command("DATA").startswith("354 ")
            raw.sock.sendall(MESSAGE)
            match = QUEUED.match(raw.reply())
            assert match, "no 250 for the message"
            queued.append(match.group(1))
        assert raw.command("QUIT").startswith("221 ")
        raw.close()
        assert sorted(running.wait_stored(8)) == sorted(queued)


def test_a_session_past_its_lifetime_gets_421_however_busy(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_session_time=1.0, command_timeout=30.0, max_junk_commands=10**6)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        raw = Raw(running.port).greeted()
        started = time.monotonic()
        replies = []
        while time.monotonic() - started < 10:
            reply = raw.command("NOOP")  # each re-arms --command-timeout
            replies.append(reply)
            if reply == LIFETIME:
                break
            assert reply == "250 2.0.0 OK", reply
        assert replies[-1] == LIFETIME
        assert 0.9 <= time.monotonic() - started < 5
        assert raw.reply() == "<closed>"
        raw.close()

        idle = Raw(running.port).greeted()
        assert idle.reply() == LIFETIME  # unprompted, while the client waits
        assert idle.reply() == "<closed>"
        idle.close()


def test_a_data_transfer_in_progress_is_finished_before_the_lifetime_421(tmp_path: Path) -> None:
    limits = ReceiverLimits(max_session_time=1.0, data_timeout=30.0)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        raw = Raw(running.port).greeted()
        assert raw.command("MAIL FROM:<a@sender.example>").startswith("250 ")
        assert raw.command("RCPT TO:<bob@example.com>").startswith("250 ")
        assert raw.command("DATA").startswith("354 ")
        started = time.monotonic()
        raw.sock.sendall(b"Subject: slow\r\n\r\n")
        while time.monotonic() - started < 1.5:  # past the lifetime, still sending
            raw.sock.sendall(b"a line of a slow message\r\n")
            time.sleep(0.05)
        raw.sock.sendall(b".\r\n")
        match = QUEUED.match(raw.reply())
        assert match, "the message in progress was cut"
        assert raw.reply() == LIFETIME
        assert raw.reply() == "<closed>"
        raw.close()
        assert list(running.wait_stored(1)) == [match.group(1)]


def test_one_sessions_ehlo_does_not_change_anothers_command_limits(receiver: Running) -> None:
    """aiosmtpd kept MAIL's line limit (512, +26 for SIZE, +10 for SMTPUTF8 after EHLO) in one
    dict for all sessions, and reset it whenever a client connected."""
    first = Raw(receiver.port).greeted()
    second = Raw(receiver.port)  # connecting reset the first session's limits
    assert second.reply().startswith("220 ")
    sender = "a" * 480 + "@sender.example"
    line = f"MAIL FROM:<{sender}> SIZE=1000 BODY=8BITMIME"
    assert 512 < len(line) <= 548
    assert first.command(line).startswith("250 ")
    first.close()
    second.close()


def test_the_flags_of_inbound_serve(tmp_path: Path) -> None:
    child = start_child(tmp_path, "--max-junk-commands", "2", "--max-session-time", "2s")
    try:
        raw = Raw(child.port).greeted()
        assert raw.command("NOOP") == "250 2.0.0 OK"
        assert raw.command("HELP NOOP").startswith("214 ")
        assert raw.command("NOOP") == JUNK_LIMIT
        raw.close()
        started = time.monotonic()
        idle = Raw(child.port).greeted()
        assert idle.reply() == LIFETIME
        assert 1.5 < time.monotonic() - started < 10
        idle.close()
    finally:
        child.signal(signal.SIGTERM)
        assert child.process.wait(DEADLINE) == 0


@pytest.mark.parametrize("then", [b"", b"QUIT\r\n"], ids=["eof", "quit_then_eof"])
def test_a_half_close_after_the_end_of_data_still_gets_the_250(
    receiver: Running, then: bytes
) -> None:
    """aiosmtpd cancelled the DATA in progress on EOF: the message got no 250 (and, cut
    during its commit, could be queued unacknowledged)."""
    raw = Raw(receiver.port).greeted()
    raw.sock.sendall(
        b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" + MESSAGE + then
    )
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.reply() == "250 2.1.0 Ok"
    assert raw.reply() == "250 2.1.5 Ok"
    assert raw.reply().startswith("354 ")
    match = QUEUED.match(raw.reply())
    assert match, "no 250 for the message"
    # What was pipelined behind the DATA (a QUIT) is not read: the client has gone.
    assert raw.reply() == "<closed>"
    raw.close()
    assert list(receiver.wait_stored(1)) == [match.group(1)]


def test_a_starttls_never_completed_gives_its_connection_slot_back(tmp_path: Path) -> None:
    """The memory that grew under hostile sessions (issue 11, item 10): after STARTTLS the
    TLS layer told the session of a lost connection only once its handshake had completed, so
    a client silent after `220 Ready to start TLS` left the session, its 256 KiB TLS buffer and
    its connection slot behind for ever, even after the command timeout closed the socket."""
    limits = ReceiverLimits(max_connections=1, command_timeout=0.5)
    with in_process(settings_for(tmp_path, tls_self_signed=True, limits=limits)) as running:
        silent = Raw(running.port).greeted()
        assert silent.command("STARTTLS").startswith("220 ")
        silent.sock.settimeout(10)
        while silent.sock.recv(65536):  # the server ends it (its timeout)
            pass
        silent.close()
        deadline = time.monotonic() + 5
        while True:
            after = Raw(running.port)
            greeting = after.reply()
            after.close()
            if greeting.startswith("220 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert greeting.startswith("220 "), greeting


def test_the_command_timeout_does_not_run_while_the_server_works_on_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5321 §4.5.3.2.7: the server's timeout is for awaiting the client. The end of DATA
    (scans, the spool's fsync) re-armed --command-timeout; when it took longer, the server said
    421 and closed mid-commit, and the message was queued although the client got no 250."""
    end_of_data = Intake.end_of_data

    async def slow(self: Intake[Any], *args: object, **kwargs: object) -> object:
        await asyncio.sleep(1.5)  # a slow scanner, a slow disk
        return await end_of_data(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Intake, "end_of_data", slow)
    limits = ReceiverLimits(command_timeout=0.5)
    with in_process(settings_for(tmp_path, limits=limits)) as running:
        raw = Raw(running.port).greeted()
        assert raw.command("MAIL FROM:<a@sender.example>").startswith("250 ")
        assert raw.command("RCPT TO:<bob@example.com>").startswith("250 ")
        assert raw.command("DATA").startswith("354 ")
        raw.sock.sendall(MESSAGE)
        match = QUEUED.match(raw.reply())
        assert match, "no 250 for the message"
        # After its reply, the client has its --command-timeout again.
        assert raw.reply() == "421 4.4.2 Timeout, closing connection"
        assert raw.reply() == "<closed>"
        raw.close()
        assert list(running.wait_stored(1)) == [match.group(1)]
