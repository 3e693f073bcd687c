"""The spam verdict from spamd, over the SPAMC/1.5 protocol (asyncio, TCP or unix socket).

`SYMBOLS SPAMC/1.5` with a `Content-length`, the message streamed from its source; spamd answers
`Spam: True ; 1000.0 / 5.0` and the names of the rules that hit. `aiospamc` is not used: it
pulls in typer and loguru for what is ~60 lines here, with our own timeout and error mapping.

Messages over `max_size` (spamc's default, 500 KB) are not sent: SpamAssassin's time grows
with size (about 1 s for 100 KB of text), spam is small, and large mail is mostly attachments
its rules do not read. spamc passes such messages through unchecked; we say GRAY ("too large
to scan"): no opinion, rather than a PASS nobody computed.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from dataclasses import dataclass
from typing import BinaryIO

from inbound.core.errors import InputError
from inbound.core.ports import MessageSource
from inbound.core.verdicts import Verdict
from inbound.scan.address import DaemonAddress, connect, describe_os_error, parse_address
from inbound.scan.result import DaemonError, ScanResult

DEFAULT_PORT = 783
DEFAULT_TIMEOUT = 30.0
SPAMC_MAX_SIZE = 500 * 1024  # spamc(1) -s default: "500 KB"
DEFAULT_GRAY_BAND = 2.0
CHUNK_SIZE = 64 * 1024
# A SYMBOLS reply is a status line, three headers and a list of rule names.
MAX_REPLY = 64 * 1024

_STATUS = re.compile(r"SPAMD/(\d+\.\d+) +(-?\d+) *(.*)")
_NUMBER = r"-?\d+(?:\.\d+)?"
_SPAM = re.compile(rf"(True|False|Yes|No) *; *({_NUMBER}) */ *({_NUMBER})", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SpamReport:
    """spamd's answer: its decision, the score against its `required_score`, the rules hit."""

    is_spam: bool
    score: float
    threshold: float
    symbols: tuple[str, ...] = ()


def parse_spamd_reply(reply: bytes) -> SpamReport:
    """`SPAMD/1.1 0 EX_OK` + `Spam: True ; 1000.0 / 5.0` (+ symbols); `DaemonError` otherwise."""
    if not reply:
        raise DaemonError("connection closed without a reply")
    head, sep, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    status = _STATUS.fullmatch(lines[0].strip())
    if status is None:
        raise DaemonError(f"unexpected reply: {lines[0][:200]!r}")
    code, message = int(status.group(2)), status.group(3).strip()
    if code != 0:
        # sysexits codes: 64 EX_USAGE, 65 EX_DATAERR, 74 EX_IOERR, 76 EX_PROTOCOL, ...
        raise DaemonError(f"answered {code} {message}".rstrip())
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    spam = _SPAM.fullmatch(headers.get("spam", ""))
    if not sep or spam is None:
        raise DaemonError(f"reply without a valid Spam header: {head[:200]!r}")
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        if len(body) < int(length):
            raise DaemonError("reply shorter than its Content-length")
        body = body[: int(length)]
    symbols = tuple(s for s in body.decode("utf-8", "replace").strip().split(",") if s)
    return SpamReport(
        is_spam=spam.group(1).lower() in ("true", "yes"),
        score=float(spam.group(2)),
        threshold=float(spam.group(3)),
        symbols=symbols,
    )


def spam_verdict(report: SpamReport, gray_band: float) -> ScanResult:
    """FAIL if spamd says spam; PASS below `threshold - gray_band`; GRAY in the band between."""
    detail = f"score {report.score:.1f} / {report.threshold:.1f}"
    if report.symbols:
        detail += f" ({','.join(report.symbols)})"
    if report.is_spam:
        return ScanResult(Verdict.FAIL, detail)
    if report.score < report.threshold - gray_band:
        return ScanResult(Verdict.PASS, detail)
    return ScanResult(Verdict.GRAY, detail)


class SpamdScanner:
    """`await SpamdScanner("127.0.0.1:783").scan(source)` → `ScanResult`; never raises for spamd.

    `timeout` bounds the whole exchange; `gray_band` is how far below spamd's threshold a
    score is still GRAY rather than PASS; `user` is sent as SPAMC's `User` header.
    """

    def __init__(
        self,
        address: DaemonAddress | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_size: int = SPAMC_MAX_SIZE,
        gray_band: float = DEFAULT_GRAY_BAND,
        user: str | None = None,
    ) -> None:
        if isinstance(address, str):
            address = parse_address(address, what="spamd address", default_port=DEFAULT_PORT)
        if timeout <= 0:
            raise InputError(f"spamd timeout must be positive, not {timeout}")
        if max_size <= 0:
            raise InputError(f"spamd max size must be positive, not {max_size}")
        if gray_band < 0:
            raise InputError(f"spamd gray band must not be negative, not {gray_band}")
        if user is not None and not re.fullmatch(r"[A-Za-z0-9._@-]+", user):
            raise InputError(f"spamd user {user!r}: letters, digits and ._@- only")
        self.address = address
        self.timeout = timeout
        self.max_size = max_size
        self.gray_band = gray_band
        self.user = user

    async def scan(self, source: MessageSource) -> ScanResult:
        try:
            size = source.size
            message = source.open()
        except OSError as exc:
            return _failed(f"cannot read the message: {describe_os_error(exc)}")
        with message:
            if size > self.max_size:
                return ScanResult(
                    Verdict.GRAY, f"too large to scan ({size} bytes, spamd limit {self.max_size})"
                )
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._symbols(message, size)
                report = parse_spamd_reply(reply)
            except TimeoutError:
                return _failed(f"spamd at {self.address}: no reply within {self.timeout:g} s")
            except OSError as exc:
                return _failed(f"spamd at {self.address}: {describe_os_error(exc)}")
            except DaemonError as exc:
                return _failed(f"spamd at {self.address}: {exc}")
        return spam_verdict(report, self.gray_band)

    async def ping(self) -> None:
        """Raise `DaemonError` with the reason unless spamd answers `PONG` within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                with await connect(self.address) as sock:
                    await asyncio.get_running_loop().sock_sendall(sock, b"PING SPAMC/1.5\r\n\r\n")
                    reply = await _read_all(sock)
        except TimeoutError:
            raise DaemonError(
                f"spamd at {self.address}: no reply within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise DaemonError(f"spamd at {self.address}: {describe_os_error(exc)}") from exc
        status = _STATUS.match(reply.decode("utf-8", "replace"))
        if status is None or status.group(2) != "0" or not status.group(3).startswith("PONG"):
            raise DaemonError(f"spamd at {self.address}: unexpected reply to PING: {reply[:100]!r}")

    async def _symbols(self, message: BinaryIO, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        head = f"SYMBOLS SPAMC/1.5\r\nContent-length: {size}\r\n"
        if self.user is not None:
            head += f"User: {self.user}\r\n"
        with await connect(self.address) as sock:
            await loop.sock_sendall(sock, head.encode("ascii") + b"\r\n")
            sent = 0
            try:
                # Local spool reads are page-cache fast; a thread hop per chunk would cost more.
                while sent < size and (chunk := message.read(min(CHUNK_SIZE, size - sent))):
                    await loop.sock_sendall(sock, chunk)
                    sent += len(chunk)
                if sent == size:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                # A daemon that rejects the request answers and closes before reading it
                # all; its answer says more than EPIPE/ECONNRESET/ENOTCONN would.
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise
            else:
                if sent != size:
                    raise DaemonError(f"the message shrank while it was sent ({sent} of {size})")
            return await _read_all(sock)


async def _read_all(sock: socket.socket) -> bytes:
    """Everything up to EOF (spamd closes after its reply), at most `MAX_REPLY` bytes."""
    loop = asyncio.get_running_loop()
    reply = b""
    while len(reply) < MAX_REPLY:
        try:
            got = await loop.sock_recv(sock, MAX_REPLY)
        except ConnectionResetError:
            break
        if not got:
            break
        reply += got
    return reply


def _failed(detail: str) -> ScanResult:
    return ScanResult(Verdict.PROCESSING_FAILED, detail)
