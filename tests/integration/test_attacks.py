"""SMTP smuggling and STARTTLS command injection (SPEC section 7, "Hostile input"): every case of
fixtures/corpus/smtp-attacks, byte for byte, against a real receiver with STARTTLS enabled.

Each `client_writes` entry is one `sendall`, exactly as the corpus gives it. A write that is one
command line is answered by one reply, read before the next write (as a client would); a write
of several lines (an attack payload) is not waited for, so whatever the server answers to it
shows up, in order, in the transcript. After a final QUIT the transcript is read to the close.
What is asserted is what a user would notice: the replies, and the objects the S3 target stored.
"""

from __future__ import annotations

import codecs
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.receiver import ROOT, Running, in_process, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ATTACKS = ROOT / "fixtures" / "corpus" / "smtp-attacks"
SMUGGLING: list[dict[str, Any]] = json.loads((ATTACKS / "smtp_smuggling_cases.json").read_text())[
    "cases"
]
STARTTLS: list[dict[str, Any]] = json.loads(
    (ATTACKS / "starttls_injection_cases.json").read_text()
)["cases"]

# One transcript, from connect to close, must be over within this many seconds.
TRANSCRIPT_DEADLINE = 10.0
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as (\S+)$")
BARE_LINE_ENDING = "550 5.5.2 Bare CR or LF in message is not allowed"
SMUGGLED_COMMAND = b"MAIL FROM:<admin@trusted.example>\r\n"
SMUGGLED_BODY = b"SMUGGLED MESSAGE BODY"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    with in_process(settings_for(tmp_path, tls_self_signed=True)) as running:
        yield running


@pytest.fixture
def played(receiver: Running) -> Iterator[Callable[[dict[str, Any]], Session]]:
    """Plays a case; its connection is closed at teardown, after any failure is reported.

    Closing a connection can make the receiver log a traceback in its thread; on Python 3.11.7
    that races pytest's own traceback formatting (both parse source with `ast`, whose global
    recursion-depth state is not thread-safe: CPython gh-106905) and ends the run with an
    INTERNALERROR. Closing after the report keeps the two apart."""
    sessions: list[Session] = []

    def run(case: dict[str, Any]) -> Session:
        session = Session(receiver)
        sessions.append(session)
        play(case, session)
        return session

    yield run
    for session in sessions:
        session.close()


# -- the client --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    text: str  # all lines of a multi-line reply, joined by "\n"
    tls: bool  # read inside the TLS session

    @property
    def code(self) -> str:
        return self.text[:3]


def wire_bytes(write: dict[str, Any]) -> bytes:
    """The bytes of one client write; the corpus's hex and escaped forms must agree."""
    data = bytes.fromhex(write["hex"])
    escaped = codecs.decode(write["escaped"], "unicode_escape").encode("latin-1")
    assert data == escaped, f"corpus: hex and escaped forms differ: {write['escaped']!r}"
    return data


def one_command(data: bytes) -> bool:
    """A single CRLF-terminated line: a command that gets exactly one reply."""
    return data.endswith(b"\r\n") and data.count(b"\n") == 1 and b"\r" not in data[:-2]


@dataclass
class Session:
    """A byte-exact SMTP client that records every reply, plaintext and TLS alike."""

    running: Running
    sock: socket.socket = field(init=False)
    deadline: float = field(init=False)
    buffer: bytes = b""
    tls: bool = False
    closed: bool = False
    greeting: str = ""
    replies: list[Reply] = field(default_factory=list)
    waited: int = 0  # replies before this index were already waited for

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + TRANSCRIPT_DEADLINE
        self.sock = socket.create_connection(("127.0.0.1", self.running.port), timeout=5)

    def greeted(self) -> None:
        greeting = self.reply()
        assert greeting is not None, "no greeting"
        assert greeting.code == "220", greeting.text
        self.replies.clear()
        self.greeting = greeting.text

    def transcript(self) -> str:
        lines = [f"S: {self.greeting}"]
        lines += [f"S{'[tls]' if r.tls else ''}: {r.text}" for r in self.replies]
        if self.closed:
            lines.append(f"(closed; unread bytes {self.buffer!r})")
        return "\n".join(lines)

    def _recv(self) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no reply before the deadline\n{self.transcript()}")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no reply before the deadline\n{self.transcript()}") from None
        except OSError:  # reset, or a TLS error: the server is gone either way
            return b""

    def reply(self) -> Reply | None:
        """The next whole reply, or None when the server closed the connection first."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                if self.closed:
                    return None
                chunk = self._recv()
                if not chunk:
                    self.closed = True
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                reply = Reply("\n".join(lines), self.tls)
                self.replies.append(reply)
                return reply

    def wait_for(self, code: str) -> None:
        """Until a reply with `code` that was not waited for yet (it may already be here)."""
        for index in range(self.waited, len(self.replies)):
            if self.replies[index].code == code:
                self.waited = index + 1
                return
        while (reply := self.reply()) is not None:
            if reply.code == code:
                self.waited = len(self.replies)
                return
        raise AssertionError(f"closed before a {code} reply\n{self.transcript()}")

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def starttls(self) -> None:
        """The TLS handshake, once the server said 220 to STARTTLS."""
        self.wait_for("220")
        assert self.buffer == b"", f"plaintext after the 220 to STARTTLS: {self.buffer!r}"
        context = ssl.create_default_context(
            cafile=self.running.data_dir / "tls" / "self-signed.crt"
        )
        context.check_hostname = False
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.1))
        try:
            self.sock = context.wrap_socket(self.sock)
        except (ssl.SSLError, OSError) as exc:
            raise AssertionError(f"TLS handshake failed: {exc}\n{self.transcript()}") from exc
        self.tls = True

    def drain(self) -> None:
        """Every reply until the server closes the connection."""
        while self.reply() is not None:
            pass

    def close(self) -> None:
        self.sock.close()


def play(case: dict[str, Any], session: Session) -> None:
    """Run the case's client writes; `session` records every reply the server sent."""
    session.greeted()
    last = b""
    for write in case["client_writes"]:
        if "then" in write:
            session.starttls()
            continue
        if "after_server_reply" in write:
            session.wait_for(write["after_server_reply"])
        last = wire_bytes(write)
        session.send(last)
        if one_command(last):
            session.reply()
    if last == b"QUIT\r\n":
        session.drain()


def settle(running: Running) -> dict[str, bytes]:
    """Objects stored once the dispatcher is done; nothing left in the spool."""
    running.wait_idle()
    assert running.queued() == []
    dead = running.data_dir / "spool" / "dead"
    assert not dead.is_dir() or list(dead.iterdir()) == []
    return running.stored()


def data_write(case: dict[str, Any], code: str = "354") -> bytes:
    [write] = [w for w in case["client_writes"] if w.get("after_server_reply") == code]
    return wire_bytes(write)


def received(data: bytes) -> bytes:
    """What DATA carries: up to the first CRLF.CRLF, with transparency (RFC 5321 4.5.2) undone."""
    message, found, _ = (b"\r\n" + data).partition(b"\r\n.\r\n")
    assert found, "no CRLF.CRLF"
    lines = message[2:].split(b"\r\n") if message else []
    return b"".join((line[1:] if line[:1] == b"." else line) + b"\r\n" for line in lines)


def describe(stored: dict[str, bytes]) -> list[str]:
    """Each stored object by its Return-Path and Subject, for failure messages."""
    found = []
    for message_id, content in sorted(stored.items()):
        fields = re.findall(rb"^(?:Return-Path|Subject): [^\r\n]*", content, re.MULTILINE)
        found.append(f"{message_id}: {b' | '.join(fields).decode('utf-8', 'replace')}")
    return found


def queued_id(reply: Reply) -> str:
    match = QUEUED.match(reply.text)
    assert match, f"not queued: {reply.text!r}"
    return match.group(1)


def codes(session: Session) -> list[str]:
    return [reply.code for reply in session.replies]


ENVELOPE = ["250", "250", "250", "354"]  # EHLO, MAIL, RCPT, DATA


# -- SMTP smuggling ----------------------------------------------------------------------------


def check_smuggling_variant(case: dict[str, Any], session: Session, running: Running) -> None:
    """A fake end-of-data inside DATA: one reply to DATA, the smuggled commands stay data."""
    payload = data_write(case)
    carrier = payload[: -len(b".\r\n")]  # everything up to the real CRLF.CRLF
    stored = settle(running)
    seen = f"{session.transcript()}\nstored: {describe(stored)}"
    # Exactly one final reply to DATA, then 221: no 250/354 for a smuggled MAIL/RCPT/DATA.
    assert len(session.replies) > 4, seen
    final = session.replies[4]
    assert codes(session) == [*ENVELOPE, final.code, "221"], seen
    assert session.closed, seen
    assert len(stored) <= 1, f"smuggling split one transaction into {len(stored)} messages"
    if re.search(rb"\r(?!\n)|(?<!\r)\n", carrier):
        # SPEC section 7: a bare CR or LF next to the dot is refused with 550 5.5.2.
        assert final.text == BARE_LINE_ENDING, session.transcript()
        assert stored == {}
    else:
        # No bare CR or LF (a NUL before the dot): one message, the smuggled text still in it.
        message_id = queued_id(final)
        assert list(stored) == [message_id]
        content = stored[message_id]
        assert SMUGGLED_COMMAND in content
        assert SMUGGLED_BODY in content
        assert content.endswith(received(payload)), "stored content is not what DATA carried"


def check_control_proper(case: dict[str, Any], session: Session, running: Running) -> None:
    assert codes(session) == [*ENVELOPE, "250", "221"], session.transcript()
    message_id = queued_id(session.replies[4])
    stored = settle(running)
    assert list(stored) == [message_id]
    assert stored[message_id].endswith(received(data_write(case)))
    assert stored[message_id].endswith(b"\r\n\r\nThis is the carrier message.\r\n")


def check_control_pipelined(case: dict[str, Any], session: Session, running: Running) -> None:
    """A second transaction after a real CRLF.CRLF is legitimate PIPELINING (RFC 2920)."""
    payload = data_write(case)
    first = received(payload)
    second = received(payload.split(b"\r\nDATA\r\n", 1)[1])
    assert codes(session) == [*ENVELOPE, "250", *ENVELOPE[1:], "250", "221"], session.transcript()
    first_id, second_id = queued_id(session.replies[4]), queued_id(session.replies[8])
    stored = settle(running)
    assert sorted(stored) == sorted([first_id, second_id])
    assert stored[first_id].endswith(first)
    assert stored[second_id].endswith(second)
    assert SMUGGLED_BODY not in stored[first_id]
    # Two transactions, each with its own envelope and the same evaluation.
    assert b"Return-Path: <user@attacker.example>\r\n" in stored[first_id]
    assert b"Return-Path: <admin@trusted.example>\r\n" in stored[second_id]
    for content in stored.values():
        assert content.startswith(b"X-Inbound-Test: stored\r\n")
        assert b"\r\nReceived-SPF: " in content


def check_control_dot_stuffing(case: dict[str, Any], session: Session, running: Running) -> None:
    assert codes(session) == [*ENVELOPE, "250", "221"], session.transcript()
    message_id = queued_id(session.replies[4])
    stored = settle(running)
    assert list(stored) == [message_id]
    content = stored[message_id]
    assert content.endswith(received(data_write(case)))
    assert content.endswith(b"\r\n\r\nline1\r\n.\r\n.not end\r\n")


def check_bdat_not_advertised(case: dict[str, Any], session: Session, running: Running) -> None:
    """Without CHUNKING, BDAT is refused and nothing its payload says is done."""
    ehlo = session.replies[0]
    assert ehlo.code == "250"
    assert "CHUNKING" not in ehlo.text.upper()
    assert codes(session)[:3] == ["250", "250", "250"], session.transcript()
    bdat, *rest, quit_reply = session.replies[3:]
    assert bdat.code in {"500", "502", "503"}, session.transcript()
    # The payload's lines, read as commands, are all refused: no 250, no 354.
    assert all(reply.code.startswith("5") for reply in rest), session.transcript()
    assert quit_reply.code == "221", session.transcript()
    assert settle(running) == {}


def check_bare_lf_header_split(case: dict[str, Any], session: Session, running: Running) -> None:
    """A bare LF that would split one SMTP line into three header fields is refused."""
    assert codes(session) == [*ENVELOPE, "550", "221"], session.transcript()
    assert session.replies[4].text == BARE_LINE_ENDING
    assert settle(running) == {}


# -- STARTTLS command injection ----------------------------------------------------------------


def plaintext(session: Session) -> list[Reply]:
    return [reply for reply in session.replies if not reply.tls]


def in_tls(session: Session) -> list[Reply]:
    return [reply for reply in session.replies if reply.tls]


def is_ehlo_reply(reply: Reply) -> bool:
    return reply.text.startswith("250-mx.test\n")


def check_inject_rset(case: dict[str, Any], session: Session, running: Running) -> None:
    """CVE-2011-0411: the RSET sent in plaintext with STARTTLS is never answered."""
    assert [r.code for r in plaintext(session)] == ["250", "220"], session.transcript()
    tls = in_tls(session)
    assert [r.code for r in tls] == ["250", "221"], session.transcript()
    assert is_ehlo_reply(tls[0]), f"first reply in TLS is not the EHLO reply: {tls[0].text!r}"
    assert settle(running) == {}


def check_inject_envelope(case: dict[str, Any], session: Session, running: Running) -> None:
    """MAIL/RCPT injected with STARTTLS do not survive the TLS upgrade: DATA gets 503."""
    assert [r.code for r in plaintext(session)] == ["250", "220"], session.transcript()
    tls = in_tls(session)
    assert [r.code for r in tls] == ["250", "503", "221"], session.transcript()
    assert is_ehlo_reply(tls[0])
    assert settle(running) == {}
    assert not (running.data_dir / "s3").exists()


def check_pipelined_starttls(case: dict[str, Any], session: Session, running: Running) -> None:
    """STARTTLS as the last command of a pipelined group is legitimate (RFC 2920 3.1)."""
    ehlo, ready = plaintext(session)
    assert (ehlo.code, ready.code) == ("250", "220"), session.transcript()
    assert "STARTTLS" in ehlo.text
    tls = in_tls(session)
    assert [r.code for r in tls] == ["250", "221"], session.transcript()
    assert is_ehlo_reply(tls[0])
    assert "STARTTLS" not in tls[0].text


def check_garbage_hello(case: dict[str, Any], session: Session, running: Running) -> None:
    """Plaintext instead of a ClientHello: the handshake fails and the server hangs up."""
    assert [r.code for r in session.replies] == ["250", "220"], session.transcript()
    assert session.closed, session.transcript()
    # No plaintext reply to NOOP: at most a TLS alert before the close.
    assert not re.search(rb"\d\d\d[ -]", session.buffer), session.buffer


def check_starttls_twice(case: dict[str, Any], session: Session, running: Running) -> None:
    """A second STARTTLS inside TLS is refused, and no longer advertised."""
    assert [r.code for r in plaintext(session)] == ["250", "220"], session.transcript()
    ehlo, again = in_tls(session)
    assert is_ehlo_reply(ehlo), session.transcript()
    assert "STARTTLS" not in ehlo.text
    assert again.code.startswith("5"), session.transcript()


Check = Callable[[dict[str, Any], Session, Running], None]
CHECKS: dict[str, Check] = {
    "control-proper-crlf-dot-crlf": check_control_proper,
    "control-pipelined-two-messages": check_control_pipelined,
    "control-dot-stuffing": check_control_dot_stuffing,
    "bdat-chunking-not-advertised": check_bdat_not_advertised,
    "bare-lf-header-split": check_bare_lf_header_split,
    "starttls-inject-rset": check_inject_rset,
    "starttls-inject-envelope": check_inject_envelope,
    "starttls-pipelined-before-starttls": check_pipelined_starttls,
    "starttls-garbage-before-clienthello": check_garbage_hello,
    "starttls-twice": check_starttls_twice,
}


def check_for(case: dict[str, Any]) -> Check:
    if "fake_end_of_data_hex" in case:
        return check_smuggling_variant
    if case["id"] not in CHECKS:
        pytest.fail(f"no expectation written for corpus case {case['id']}")
    return CHECKS[case["id"]]


@pytest.mark.parametrize("case", SMUGGLING, ids=[case["id"] for case in SMUGGLING])
def test_smuggling(
    case: dict[str, Any], receiver: Running, played: Callable[[dict[str, Any]], Session]
) -> None:
    check = check_for(case)
    check(case, played(case), receiver)


@pytest.mark.parametrize("case", STARTTLS, ids=[case["id"] for case in STARTTLS])
def test_starttls_injection(
    case: dict[str, Any], receiver: Running, played: Callable[[dict[str, Any]], Session]
) -> None:
    check = check_for(case)
    check(case, played(case), receiver)


def test_every_case_has_an_expectation() -> None:
    smuggling = [c["id"] for c in SMUGGLING if "fake_end_of_data_hex" in c]
    assert len(smuggling) == 15
    assert sorted(set(CHECKS)) == sorted(
        c["id"] for c in [*SMUGGLING, *STARTTLS] if c["id"] not in smuggling
    )
