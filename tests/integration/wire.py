"""A byte-exact SMTP client for hostile-input tests, with its TLS layer in memory.

Every byte the server sends is seen as it arrives: after STARTTLS the client can tell a TLS
record from a plaintext reply, which a TLS socket would hide inside a handshake error.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

READ_TIMEOUT = 10.0
# TLS record types (RFC 8446 §5.1): change_cipher_spec, alert, handshake, application_data.
TLS_RECORD_TYPES = frozenset({0x14, 0x15, 0x16, 0x17})


class PlaintextAfterStarttlsError(AssertionError):
    """The server sent something that is not a TLS record after its 220 to STARTTLS."""


class Wire:
    def __init__(self, port: int, timeout: float = READ_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buffer = b""
        self.closed = False
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()

    @property
    def tls(self) -> bool:
        return self._tls is not None

    # -- bytes -------------------------------------------------------------------------------

    def _recv_raw(self) -> bytes:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
        return chunk

    def _read(self) -> bytes:
        if self._tls is None:
            return self._recv_raw()
        while True:
            try:
                return self._tls.read(65536)
            except ssl.SSLWantReadError:
                raw = self._recv_raw()
                if not raw:
                    return b""
                self._incoming.write(raw)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.closed = True
                return b""

    def send(self, data: bytes) -> None:
        """Send `data`; a server that hung up (or stopped reading) ends the sending quietly."""
        if self._tls is not None:
            self._tls.write(data)
            data = self._outgoing.read()
        with contextlib.suppress(TimeoutError, ConnectionResetError, BrokenPipeError):
            self.sock.sendall(data)

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.send_raw(pending)

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            self.closed = True

    # -- SMTP --------------------------------------------------------------------------------

    def reply(self) -> str | None:
        """One whole reply (all lines of a multi-line one, joined by "\\n"); None once closed."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self._read()
                if not chunk:
                    return None
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    def command(self, line: str) -> str | None:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self, cafile: Path) -> bool:
        """The handshake after a 220 to STARTTLS: True when it completed, False when the server
        closed the connection; any plaintext from the server raises."""
        if self.buffer:
            raise PlaintextAfterStarttlsError(f"before the handshake: {self.buffer[:200]!r}")
        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
        tls = context.wrap_bio(self._incoming, self._outgoing)
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                raw = self._recv_raw()
                if not raw:
                    return False
                if raw[0] not in TLS_RECORD_TYPES:
                    raise PlaintextAfterStarttlsError(f"in the handshake: {raw[:200]!r}") from None
                self._incoming.write(raw)
            except ssl.SSLError:
                return False  # an alert: the server refused what it read
            else:
                self._flush()
                self._tls = tls
                return True

    def drain(self, deadline: float = READ_TIMEOUT) -> list[str]:
        """Every reply until the server closes the connection."""
        end = time.monotonic() + deadline
        found: list[str] = []
        while time.monotonic() < end and (reply := self.reply()) is not None:
            found.append(reply)
        return found

    def close(self) -> None:
        self.sock.close()
