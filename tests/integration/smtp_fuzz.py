"""Generated hostile SMTP sessions, deterministic per seed, and the client that plays them.

A session is a list of writes (several commands in one write is pipelining), STARTTLS at odd
points with plaintext behind it, smuggling bodies, bare CR and LF, NUL bytes, long lines,
random verbs and arguments, and a way to end (QUIT, a half-close, an abrupt close, or cut at a
random byte). The client records every byte it is sent, plaintext and TLS apart, and checks
the lines of both. Used by tests/integration/test_smtp_fuzz.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
import time
from dataclasses import dataclass, field

QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as (\S+)$")
# RFC 5321 §4.2: a code, "-" or " ", printable text, at most 512 octets with the CRLF.
REPLY_LINE = re.compile(rb"^[2-5]\d\d([ -][\x20-\x7e]*)?$")
MAX_REPLY_LINE = 510
SMUGGLED_MARK = b"X-Smuggled: inner"

_HOSTS = [b"client.test", b"", b"[127.0.0.1]", b"a" * 300, b"\xc3\xbc.example", b"x\x00y"]
_SENDERS = [
    b"FROM:<a@sender.example>", b"FROM:<>", b"FROM:a@", b"FROM:", b"FROM:<a@sender.example> SIZE=10",
    b"FROM:<a@sender.example> SIZE=99999999999", b"FROM:<a@sender.example> BODY=8BITMIME",
    b"FROM:<\xc3\xbc@sender.example> SMTPUTF8", b"FROM:<@route.example:a@sender.example>",
    b"from:<A@Sender.Example>", b"FROM:<a@sender.example> AUTH=<>", b"FROM:<a b@c>", b"FROM:<<>>",
    b"FROM:<a@sender.example> FOO", b"FROM:<" + b"l" * 300 + b"@sender.example>",
]  # fmt: skip
_RECIPIENTS = [
    b"TO:<bob@example.com>", b"TO:<x@inbound.example>", b"TO:<secure@example.com>",
    b"TO:<virus@example.com>", b"TO:<x@not-ours.example>", b"TO:x@", b"TO:<Postmaster>",
    b"TO:<bob@example.com> NOTIFY=NEVER", b"TO:<>", b"TO:", b"TO:<bob@example.com> X=\x00",
    b"to:<BOB@EXAMPLE.COM>", b"TO:<bob@example.com",
]  # fmt: skip
_VERBS = [
    b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP",
    b"STARTTLS", b"AUTH", b"QUIT", b"BDAT", b"ETRN", b"XCLIENT", b"TURN", b"mail", b"ehlo",
]  # fmt: skip
_AUTH = [b"PLAIN", b"PLAIN dGVzdAB0ZXN0AHRlc3Q=", b"LOGIN", b"CRAM-MD5", b"XOAUTH2 abc", b"="]
_NOISE = [b"\x00", b"\r", b"\n", b"\x1b[31m", b"\x7f", b"\xff\xfe", b"\xc3\xbc", b"\t", b" "]
# Printable ASCII with control characters, bytes that are not UTF-8, and UTF-8 among it.
_NOISE_TOKENS = [bytes([c]) for c in range(33, 127)] + _NOISE * 5
_ENDINGS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\n\r", b"\x00\r\n", b""]
# Ways to make one transaction look like two (SMTP smuggling): what ends the outer body.
_SMUGGLE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\r\n"]
_STARTTLS_TAIL = [0, 0, 0, 0, 20, 100, 2048, 4096, 65536]
# RFC 5321 §4.5.3.2.6: a client waits 10 minutes for the reply to its final dot, the server
# doing its own work then (checks, the spool's fsync). On a loaded machine a commit can take
# several seconds; a session that gave up sooner would find its message stored without the
# 250 it left too early to read (RFC 1047), which is the client's doing, not the server's.
AFTER_DOT = 60.0


@dataclass
class Write:
    data: bytes
    wait: bool = True  # wait for (some of) its replies before the next write
    starttls: bool = False  # the last command is STARTTLS: on 220, maybe start a handshake
    handshake: bool = True
    # A smuggling body is sent only once the DATA before it got 354: sent after a refused
    # DATA, its inner transaction would be commands the client sent, not smuggling.
    replies_before: int = 0  # final replies due since the transaction's first write
    transaction: bool = False  # the first write of a transaction


@dataclass
class Script:
    writes: list[Write] = field(default_factory=list)
    end: str = "quit"  # quit | half-close | abort | cut


def _noise(rng: random.Random, n: int) -> bytes:
    return b"".join(rng.choices(_NOISE_TOKENS, k=n))


def _argument(rng: random.Random, verb: bytes) -> bytes:
    upper = verb.upper()
    if upper in (b"EHLO", b"HELO"):
        return rng.choice(_HOSTS)
    if upper == b"MAIL":
        return rng.choice(_SENDERS)
    if upper == b"RCPT":
        return rng.choice(_RECIPIENTS)
    if upper == b"AUTH":
        return rng.choice(_AUTH)
    if rng.random() < 0.6:
        return b""
    return _noise(rng, rng.choice([1, 5, 30, 200, 600]))


def _command(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.05:  # a long line: over the command limit, over the line limit, far over
        return b"NOOP " + b"x" * rng.choice([600, 1000, 1001, 5000, 70000]) + b"\r\n"
    if roll < 0.10:
        return _noise(rng, rng.randrange(0, 40)) + rng.choice(_ENDINGS)
    verb = rng.choice(_VERBS) if roll < 0.9 else _noise(rng, rng.randrange(1, 8))
    argument = _argument(rng, verb)
    line = verb + (b" " + argument if argument or rng.random() < 0.1 else b"")
    return line + (rng.choice(_ENDINGS) if rng.random() < 0.15 else b"\r\n")


def _body(rng: random.Random, session: int) -> bytes:
    lines = [b"From: a@sender.example", b"To: bob@example.com", b"Subject: fuzz %d" % session]
    lines += [b"", b"body of session %d" % session]
    for _ in range(rng.randrange(0, 6)):
        kind = rng.random()
        if kind < 0.3:
            lines.append(b"." + _noise(rng, rng.randrange(0, 10)))  # dot-stuffed
        elif kind < 0.4:
            lines.append(b"y" * rng.choice([998, 999, 1000, 3000]))
        elif kind < 0.5:
            lines.append(b"nul\x00byte and bare \r here and \n there")
        else:
            lines.append(_noise(rng, rng.randrange(0, 60)).replace(b"\r", b"").replace(b"\n", b""))
    # RFC 5321 §4.5.2: the client doubles a leading dot; an unstuffed "." line would be the
    # client's own end of data, and what follows its own commands.
    return b"".join((b"." if line[:1] == b"." else b"") + line + b"\r\n" for line in lines)


def _transaction(rng: random.Random, session: int) -> list[Write]:
    """MAIL, RCPT, DATA and a message: mostly valid, sometimes pipelined, sometimes smuggling."""
    rcpts = [b"RCPT " + rng.choice(_RECIPIENTS[:4]) + b"\r\n" for _ in range(rng.randrange(1, 4))]
    envelope = [b"MAIL " + rng.choice(_SENDERS[:3]) + b"\r\n", *rcpts, b"DATA\r\n"]
    body = _body(rng, session)
    if rng.random() < 0.25:  # SMTP smuggling
        inner = (
            b"MAIL FROM:<admin@trusted.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            + SMUGGLED_MARK
            + b"\r\n\r\nSMUGGLED\r\n.\r\n"
        )
        body = body + rng.choice(_SMUGGLE_ENDS) + inner + b"more of the outer body\r\n"
        smuggling = len(envelope)
    else:
        smuggling = 0
    body_write = Write(body + b".\r\n", replies_before=smuggling)
    if rng.random() < 0.4:  # RFC 2920 pipelining: envelope in one write, the body after 354
        return [Write(b"".join(envelope), transaction=True), body_write]
    return [Write(line, transaction=i == 0) for i, line in enumerate(envelope)] + [body_write]


def _starttls(rng: random.Random) -> Write:
    tail_size = rng.choice(_STARTTLS_TAIL)
    if rng.random() < 0.003:
        tail_size = 1 << 20
    tail = b""
    if tail_size:
        injected = (
            b"EHLO evil.example\r\nMAIL FROM:<evil@attacker.example>\r\n"
            b"RCPT TO:<secure@example.com>\r\nDATA\r\nX-Injected: yes\r\n\r\ninjected\r\n.\r\n"
        )
        filler = (b"X" * 900 + b"\r\n") * (tail_size // 902 + 1)
        tail = (injected + filler)[:tail_size] if rng.random() < 0.5 else filler[:tail_size]
    prefix = _command(rng) if rng.random() < 0.3 else b""  # pipelined before it
    return Write(prefix + b"STARTTLS\r\n" + tail, starttls=True, handshake=rng.random() < 0.8)


def generate(seed: int, session: int) -> Script:
    rng = random.Random(f"{seed}:{session}")  # noqa: S311 - reproducible, not secret
    script = Script()
    if rng.random() < 0.85:
        script.writes.append(
            Write(b"EHLO client.test\r\n" if rng.random() < 0.8 else b"HELO c\r\n")
        )
    for _ in range(rng.choice([0, 1, 2, 3, 5, 8])):
        roll = rng.random()
        if roll < 0.25:
            script.writes.extend(_transaction(rng, session))
        elif roll < 0.35:
            script.writes.append(_starttls(rng))
        elif roll < 0.55:  # several commands in one write
            script.writes.append(Write(b"".join(_command(rng) for _ in range(rng.randrange(2, 9)))))
        else:
            script.writes.append(Write(_command(rng), wait=rng.random() < 0.7))
    roll = rng.random()
    script.end = (
        "quit" if roll < 0.7 else "half-close" if roll < 0.8 else "abort" if roll < 0.9 else "cut"
    )
    return script


# -- the client ----------------------------------------------------------------------------------


@dataclass
class Transcript:
    plain: bytearray = field(default_factory=bytearray)
    tls: bytearray = field(default_factory=bytearray)
    handshake: bool = False
    hung: bool = False  # the server neither answered nor closed within the deadline
    # Wall-clock times (to compare with the server's log): the last write, the client's end.
    last_write: float = 0.0
    ended: float = 0.0

    def queued(self) -> tuple[list[str], list[str]]:
        """Message IDs in `250 2.0.0 Ok: queued as` replies: (plaintext, inside TLS)."""
        return _queued(self.plain), _queued(self.tls)

    def malformed(self, cut: bool) -> list[bytes]:
        """Reply lines that are not well formed (a line the client cut off is left out)."""
        bad = []
        for stream in (self.plain, self.tls):
            lines = bytes(stream).split(b"\r\n")
            if lines[-1] and not cut:
                bad.append(b"unterminated: " + lines[-1][:80])
            for line in lines[:-1]:
                if not REPLY_LINE.match(line) or len(line) > MAX_REPLY_LINE:
                    bad.append(line[:200])
        return bad


def _finals(stream: bytearray) -> int:
    """Final reply lines (code, space) in the stream so far."""
    return len(_FINAL.findall(stream))


_FINAL = re.compile(rb"(?m)^\d{3} ")


def _queued(stream: bytearray) -> list[str]:
    ids = []
    for line in bytes(stream).split(b"\r\n"):
        match = QUEUED.match(line)
        if match:
            ids.append(match.group(1).decode("ascii", "replace"))
    return ids


_CLIENT_TLS = ssl.create_default_context()
_CLIENT_TLS.check_hostname = False
_CLIENT_TLS.verify_mode = ssl.CERT_NONE


async def play(port: int, script: Script, seed: int, session: int, deadline: float) -> Transcript:
    """Play `script`; every byte the server sends is in the transcript."""
    transcript = Transcript()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = asyncio.Event()
    sink = transcript.plain

    async def pump() -> None:
        while data := await reader.read(65536):
            sink.extend(data)
            received.set()
        received.set()

    async def wait_reply(timeout: float) -> None:
        # Until a complete reply line more, the end of the stream, or the timeout.
        before = sink.count(b"\n")
        try:
            async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                while sink.count(b"\n") <= before and not reader.at_eof():
                    received.clear()
                    await received.wait()
        except TimeoutError:
            return

    async def wait_finals(count: int, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while _finals(sink) < count and not reader.at_eof():
                    received.clear()
                    await received.wait()
        except TimeoutError:
            return

    reading = asyncio.create_task(pump())
    started = 0
    rng = random.Random(f"{seed}:{session}:client")  # noqa: S311 - reproducible, not secret
    data = b"".join(w.data for w in script.writes)
    cut_at = rng.randrange(len(data) + 1) if script.end == "cut" else None
    sent = 0
    written = bytearray()
    try:
        await wait_reply(5.0)  # the greeting
        for write in script.writes:
            chunk = write.data
            if write.transaction:
                started = _finals(sink)
            if write.replies_before:
                await wait_finals(started + write.replies_before, 3.0)
                if not sink.rstrip(b"\r\n").rpartition(b"\n")[2].startswith(b"354 "):
                    continue
            if cut_at is not None and sent + len(chunk) >= cut_at:
                chunk = chunk[: cut_at - sent]
                writer.write(chunk)
                written += chunk
                break
            writer.write(chunk)
            transcript.last_write = time.time()
            sent += len(chunk)
            written += chunk
            await asyncio.wait_for(writer.drain(), AFTER_DOT if b".\r\n" in written else 10)
            if write.starttls and not transcript.handshake:
                await wait_reply(1.0)
                if bytes(sink).rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].startswith(b"220 "):
                    if not write.handshake:
                        break  # silence after 220: the server's timeout ends it
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                    try:
                        await writer.start_tls(_CLIENT_TLS, ssl_handshake_timeout=2)
                    except (ssl.SSLError, OSError, TimeoutError):
                        return transcript  # the server may refuse, or close, mid-handshake
                    transcript.handshake = True
                    sink = transcript.tls
                    reading = asyncio.create_task(pump())
            elif write.wait and chunk.endswith(b"\r\n"):  # else no reply can be complete
                await wait_reply(0.3)
        ended = script.end
        if ended == "abort" and b".\r\n" in written:
            ended = "half-close"  # a DATA may have ended: its 250 must still be read
        if ended == "abort":
            writer.transport.abort()
            return transcript
        if ended == "quit" or transcript.handshake:  # TLS has no half-close
            writer.write(b"QUIT\r\n")
        if writer.can_write_eof():
            writer.write_eof()
        if b".\r\n" in written:
            deadline = AFTER_DOT
        try:
            await asyncio.wait_for(asyncio.shield(reading), deadline)
        except TimeoutError:
            # Inside TLS a QUIT read as data (an open DATA) leaves the server waiting, rightly.
            if not transcript.handshake:
                raise
    except TimeoutError:
        transcript.hung = True
    except (ConnectionError, ssl.SSLError, OSError):
        # The server closed first (421, 502 after unknown commands): read what it sent.
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError, OSError):
            patience = AFTER_DOT if b".\r\n" in written else deadline
            await asyncio.wait_for(asyncio.shield(reading), patience)
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        writer.transport.abort()
        transcript.ended = time.time()
    return transcript
