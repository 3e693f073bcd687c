"""The virus verdict from clamd, over its INSTREAM protocol (asyncio, TCP or unix socket).

The message is streamed from its source in chunks (`<length:u32 big-endian><bytes>`, a
zero length ends it), so a 40 MB message is never held in memory. The `clamd` PyPI package is
not used: it is unmaintained since 2014, blocks without a timeout by default, and raises a raw
`BrokenPipeError` instead of reporting clamd's `INSTREAM size limit exceeded`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import BinaryIO

from inbound.core.errors import InputError
from inbound.core.ports import MessageSource
from inbound.core.verdicts import Verdict
from inbound.scan.address import DaemonAddress, connect, describe_os_error, parse_address
from inbound.scan.result import DaemonError, ScanResult

DEFAULT_PORT = 3310
DEFAULT_TIMEOUT = 30.0
CHUNK_SIZE = 64 * 1024
# clamd's replies are one short line; anything longer is not clamd.
MAX_REPLY = 4096
SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded"


class ClamdScanner:
    """`await ClamdScanner("127.0.0.1:3310").scan(source)` → `ScanResult`; never raises for clamd.

    `timeout` bounds the whole exchange (connect, stream, reply): a clamd that is down, hangs
    or refuses the message gives `PROCESSING_FAILED` with the reason.
    """

    def __init__(
        self,
        address: DaemonAddress | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if isinstance(address, str):
            address = parse_address(address, what="clamd address", default_port=DEFAULT_PORT)
        if timeout <= 0:
            raise InputError(f"clamd timeout must be positive, not {timeout}")
        if chunk_size <= 0:
            raise InputError(f"clamd chunk size must be positive, not {chunk_size}")
        self.address = address
        self.timeout = timeout
        self.chunk_size = chunk_size

    async def scan(self, source: MessageSource) -> ScanResult:
        try:
            message = source.open()
        except OSError as exc:
            return _failed(f"cannot read the message: {describe_os_error(exc)}")
        with message:
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._instream(message)
            except TimeoutError:
                return _failed(f"clamd at {self.address}: no reply within {self.timeout:g} s")
            except OSError as exc:
                return _failed(f"clamd at {self.address}: {describe_os_error(exc)}")
        result = parse_clamd_reply(reply)
        if result.verdict is Verdict.PROCESSING_FAILED:
            return _failed(f"clamd at {self.address}: {result.detail}")
        return result

    async def ping(self) -> None:
        """Raise `DaemonError` with the reason unless clamd answers `PONG` within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                with await connect(self.address) as sock:
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendall(sock, b"zPING\0")
                    reply = await _read_reply(sock)
        except TimeoutError:
            raise DaemonError(
                f"clamd at {self.address}: no reply within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise DaemonError(f"clamd at {self.address}: {describe_os_error(exc)}") from exc
        if reply.rstrip(b"\0") != b"PONG":
            raise DaemonError(f"clamd at {self.address}: unexpected reply to PING: {reply[:100]!r}")

    async def _instream(self, message: BinaryIO) -> bytes:
        loop = asyncio.get_running_loop()
        with await connect(self.address) as sock:
            # The z prefix asks for NUL-terminated replies (clamd(8), "COMMANDS").
            await loop.sock_sendall(sock, b"zINSTREAM\0")
            try:
                # Reading a chunk of a spooled message is page-cache fast; a thread hop per
                # chunk would cost more than the read itself.
                while chunk := message.read(self.chunk_size):
                    await loop.sock_sendall(sock, struct.pack("!L", len(chunk)) + chunk)
                await loop.sock_sendall(sock, struct.pack("!L", 0))
            except (BrokenPipeError, ConnectionResetError):
                # clamd stops reading and closes when the stream passes its StreamMaxLength;
                # the reason it sent first is still in our receive buffer.
                pass
            return await _read_reply(sock)


async def _read_reply(sock: socket.socket) -> bytes:
    """Bytes up to and including the first NUL, or up to EOF (or a reset) if there is none."""
    loop = asyncio.get_running_loop()
    reply = b""
    while b"\0" not in reply and len(reply) < MAX_REPLY:
        try:
            got = await loop.sock_recv(sock, MAX_REPLY)
        except ConnectionResetError:
            break
        if not got:
            break
        reply += got
    return reply


def parse_clamd_reply(reply: bytes) -> ScanResult:
    """clamd's answer to INSTREAM as a verdict: `stream: OK`, `stream: NAME FOUND`, `... ERROR`.

    FAIL carries the signature name (`Eicar-Test-Signature.UNOFFICIAL`); PROCESSING_FAILED says
    what went wrong.
    """
    text = reply.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    if not text:
        return _failed("connection closed without a reply")
    if text.endswith(" ERROR"):
        if text.startswith(SIZE_LIMIT_REPLY):
            return _failed(
                "INSTREAM size limit exceeded: the message is larger than clamd's StreamMaxLength"
            )
        return _failed(f"error: {text.removesuffix(' ERROR')}")
    name, sep, status = text.partition(": ")
    if sep and name == "stream":
        if status == "OK":
            return ScanResult(Verdict.PASS, "no signature matched")
        signature = status.removesuffix(" FOUND")
        if signature != status and signature.strip():
            return ScanResult(Verdict.FAIL, signature)
    return _failed(f"unexpected reply: {text[:200]!r}")


def _failed(detail: str) -> ScanResult:
    return ScanResult(Verdict.PROCESSING_FAILED, detail)
