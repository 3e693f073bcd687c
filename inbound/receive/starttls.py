"""STARTTLS's switch of one session's connection to TLS (RFC 3207), on asyncio's TLS layer.

It owns what must hold between the 220 to STARTTLS and the handshake: the plaintext the client
sent after STARTTLS is discarded, however much it is, and the socket reads on so the handshake
can complete. It does not decide when a session counts as TLS: only a completed handshake does
(the session learns of it when the TLS layer calls its connection_made).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from asyncio import sslproto


class _TlsTransport(sslproto._SSLProtocolTransport):
    """asyncio's TLS transport, closed once only: its second close() drops its protocol, and
    every later call fails with AttributeError (a write, or the stream reader resuming it), while
    aiosmtpd closes a session's transport more than once (its unknown-command limit, QUIT)."""

    def close(self) -> None:
        if not self.is_closing():
            super().close()


class TlsProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer with `_TlsTransport` as the transport the session writes to."""

    def _get_app_transport(self) -> sslproto._SSLProtocolTransport:
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = _TlsTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport


def start_tls(
    session: asyncio.BaseProtocol,
    transport: asyncio.Transport,
    reader: asyncio.StreamReader,
    context: ssl.SSLContext,
) -> tuple[TlsProtocol, asyncio.Future[None]]:
    """Put a server-side TLS layer between `transport` and `session`; the future is the
    handshake's, and resolves without error also when the connection closes during it.

    aiosmtpd clears the buffered plaintext only once the handshake has completed
    (CVE-2024-34083). With more than twice the line limit buffered, the stream reader has paused
    the socket, so the ClientHello was never read and that clearing never ran; a close during
    the handshake (a timeout, shutdown) then ran the plaintext as commands."""
    # Nothing here awaits, so nothing more reaches the reader: what it holds is discarded,
    # and whatever the socket still holds goes to the TLS layer (and fails the handshake).
    reader._buffer.clear()  # type: ignore[attr-defined]
    reader._paused = False  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = TlsProtocol(loop, session, context, waiter, server_side=True)
    transport.set_protocol(tls)
    tls.connection_made(transport)
    transport.resume_reading()  # the reader may have paused it at twice its limit
    return tls, waiter


def handshake_failure(error: Exception | None) -> str:
    """Why a handshake failed, for the log: OpenSSL's reason code (`NO_SHARED_CIPHER`,
    `UNSUPPORTED_PROTOCOL`...), or the kind of failure; never the error's text."""
    if error is None:
        return "CONNECTION_CLOSED"
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    if isinstance(reason, str) and re.fullmatch(r"[A-Z0-9_]{1,64}", reason):
        return reason
    return type(error).__name__
