"""The SMTP conformance list (issue 13): every session of tests/integration/conformance/*.smtp,
played byte for byte on a raw socket against a real receiver started in this process.

The sessions record the receiver's decisions (the reply to each command, RFC 5321 and its
extensions as SPEC section 7 reads them), many of them adapted from aiosmtpd's own test suite;
any SMTP engine of the receiver must pass them unchanged. One receiver is started per distinct
`settings:` line and reused by every case that names the same settings. STARTTLS handshakes are
real (the receiver's self-signed certificate). A failure shows the case as written and the
transcript of what was sent and received.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import pytest

from inbound.receive.limits import ReceiverLimits
from inbound.receive.proxy import ProxyTrust
from tests.integration.conformance.script import (
    Case,
    Expect,
    ExpectClose,
    ExpectQuiet,
    Pause,
    ScriptError,
    Send,
    StartTls,
    parse,
)
from tests.integration.receiver import Running, in_process, settings_for
from tests.integration.wire import PlaintextAfterStarttlsError, Wire

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SCRIPTS = Path(__file__).parent / "conformance"
RULES = (SCRIPTS / "rules.yaml").read_text()
# How long a reply may take; every timeout a case sets is well below it.
REPLY_DEADLINE = 5.0
REPLY_LINE = re.compile(r"\d{3}([ -][\x20-\x7e]*)?")
_LIMIT_FIELDS = {f.name for f in fields(ReceiverLimits)}


def _cases() -> list[object]:
    """Every case of every script."""
    return [
        pytest.param(case, id=case.id)
        for path in sorted(SCRIPTS.glob("*.smtp"))
        for case in parse(path)
    ]


CASES = _cases()


def limits_of(settings: tuple[str, ...]) -> ReceiverLimits:
    """The limits a case's `settings:` line names; the defaults for the rest."""
    values: dict[str, Any] = {}
    for token in settings:
        name, _, value = token.partition("=")
        if value and name != "proxy":
            field = name.replace("-", "_")
            assert field in _LIMIT_FIELDS, token
            values[field] = float(value) if "." in value else int(value)
    return ReceiverLimits(**values)


def proxies_of(settings: tuple[str, ...]) -> ProxyTrust | None:
    """`proxy=CIDR,...`: the receiver's --proxy-protocol (the client connects from 127.0.0.1)."""
    for token in settings:
        name, _, value = token.partition("=")
        if name == "proxy":
            return ProxyTrust.parse(value)
    return None


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Case], Running]]:
    """A receiver for a case's settings: started on first use, shared for the module."""
    started: dict[tuple[str, ...], Running] = {}
    with contextlib.ExitStack() as stack:

        def receiver(case: Case) -> Running:
            if case.settings not in started:
                tmp = tmp_path_factory.mktemp("conformance")
                settings = settings_for(
                    tmp,
                    RULES,
                    tls_self_signed="tls" in case.settings,
                    proxy_protocol=proxies_of(case.settings),
                    limits=limits_of(case.settings),
                )
                started[case.settings] = stack.enter_context(in_process(settings))
            return started[case.settings]

        yield receiver


@pytest.fixture
def clients() -> Iterator[list[Wire]]:
    """Connections are closed at teardown, after any failure is reported: a close can make the
    receiver log from its thread while pytest formats the failure (see test_attacks.py)."""
    opened: list[Wire] = []
    yield opened
    for client in opened:
        client.close()


class Transcript:
    """What a case sent and received, in the scripts' own notation, for its failure report."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def client(self, text: str) -> None:
        self.lines += [f"  {line}" for line in text.splitlines()]

    def server(self, reply: str | None) -> None:
        if reply is None:
            self.lines.append("  S: <closed>")
        else:
            self.lines += [f"  S: {line}" for line in reply.split("\n")]

    def note(self, text: str) -> None:
        self.lines.append(f"  ({text})")


def fail(case: Case, transcript: Transcript, why: str) -> NoReturn:
    pytest.fail(
        f"{why}\n\n{case.path.name}:{case.line} ({case.ref or 'no ref'}):\n{case.text}\n\n"
        "what was sent and received:\n" + "\n".join(transcript.lines),
        pytrace=False,
    )


def read_reply(client: Wire, seconds: float) -> str | None:
    """The next whole reply (None: closed); TimeoutError when none comes within `seconds`."""
    client.sock.settimeout(seconds)
    try:
        return client.reply()
    finally:
        client.sock.settimeout(REPLY_DEADLINE)


def malformed(reply: str) -> str | None:
    """A line of `reply` that is not a reply line: three digits, then "-" or a space or the
    end, printable ASCII only, 512 octets with its CRLF at most (RFC 5321 §4.2, §4.5.3.1.5)."""
    for line in reply.split("\n"):
        if not REPLY_LINE.fullmatch(line) or len(line) > 510:
            return line
    return None


def play(case: Case, running: Running, client: Wire) -> None:
    transcript = Transcript()
    cafile = running.data_dir / "tls" / "self-signed.crt"
    for step in case.steps:
        if isinstance(step, Send):
            transcript.client(step.shown)
            client.send(step.data)
        elif isinstance(step, Pause):
            transcript.note(f"client silent for {step.seconds}s")
            time.sleep(step.seconds)
        elif isinstance(step, StartTls):
            transcript.note("TLS handshake")
            try:
                completed = client.starttls(cafile)
            except PlaintextAfterStarttlsError as exc:
                fail(case, transcript, f"plaintext from the server after its 220: {exc}")
            if not completed:
                fail(case, transcript, "the TLS handshake did not complete")
        elif isinstance(step, ExpectQuiet):
            try:
                reply = read_reply(client, step.seconds)
            except TimeoutError:
                transcript.note(f"server silent for {step.seconds}s")
                continue
            transcript.server(reply)
            fail(case, transcript, f"expected no reply for {step.seconds}s")
        elif isinstance(step, Expect | ExpectClose):
            try:
                reply = read_reply(client, REPLY_DEADLINE)
            except TimeoutError:
                transcript.note(f"no reply within {REPLY_DEADLINE}s")
                fail(case, transcript, f"expected:\n{step}")
            transcript.server(reply)
            if reply is not None and (bad := malformed(reply)):
                fail(case, transcript, f"a malformed reply line: {bad!r}")
            if isinstance(step, ExpectClose):
                if reply is not None:
                    fail(case, transcript, "expected the server to close the connection")
            elif reply is None or not step.matches(reply.split("\n")):
                fail(case, transcript, f"expected:\n{step}")


@pytest.mark.parametrize("case", CASES)
def test_session(case: Case, receivers: Callable[[Case], Running], clients: list[Wire]) -> None:
    running = receivers(case)
    client = Wire(running.port, timeout=REPLY_DEADLINE)
    clients.append(client)
    play(case, running, client)


def test_the_list_is_long_enough_and_every_verb_is_in_it() -> None:
    """Issue 13: at least 150 sessions, every verb among the commands sent."""
    cases = [case for path in SCRIPTS.glob("*.smtp") for case in parse(path)]
    assert len(cases) >= 150, len(cases)
    sent = b"\n".join(
        step.data.upper() for case in cases for step in case.steps if isinstance(step, Send)
    )
    for verb in (
        b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY",
        b"EXPN", b"HELP", b"STARTTLS", b"AUTH", b"BDAT",
    ):  # fmt: skip
        assert verb in sent, verb


def test_replies_match_by_code_status_and_the_words_named() -> None:
    ok = Expect((("250 2.1.0",),))
    assert ok.matches(["250 2.1.0 Ok"])
    assert ok.matches(["250 2.1.0"])
    assert not ok.matches(["250 2.1.05 Ok"])
    assert not ok.matches(["250-2.1.0 Ok", "250 more"])
    ehlo = Expect((("250-mx.test",), ("250 ...",)))
    assert ehlo.matches(["250-mx.test", "250-SIZE 1000", "250 ENHANCEDSTATUSCODES"])
    assert not ehlo.matches(["250-mx.test"])
    assert not ehlo.matches(["250-mx.test", "250-SIZE 1000", "251 x"])
    either = Expect((("214 2.0.0", "250 2.0.0"),))
    assert either.matches(["250 2.0.0 Supported commands"])
    assert not either.matches(["501 5.5.4 Syntax"])


@pytest.mark.parametrize(
    "script",
    [
        "=== a\nsettings: max-message-sise=10\n",
        "=== a\nC: EHLO x\nS: 250-mx.test\nC: QUIT\n",
        "=== a\nS: hello\n",
        "=== a\nC: NOOP\n=== a\nC: NOOP\n",
        "C: NOOP\n",
    ],
    ids=["unknown setting", "unfinished reply", "not a reply", "two titles", "no title"],
)
def test_a_malformed_script_is_refused(tmp_path: Path, script: str) -> None:
    path = tmp_path / "bad.smtp"
    path.write_text(script)
    with pytest.raises(ScriptError, match=r"bad\.smtp:\d+: "):
        parse(path)
