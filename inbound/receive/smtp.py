"""One SMTP session: aiosmtpd's protocol engine with inbound's decisions and hostile-input rules.

What this module adds to aiosmtpd: refusals before the greeting (receipt filters, connection
limits), per-RCPT decisions and the recipient limit, DATA streamed to a writer line by line
(never the whole message in memory), bare CR/LF and smuggling refused with 550 5.5.2, enhanced
status codes (RFC 2034) on every reply, and 451 4.3.0 for internal errors instead of
aiosmtpd's reply that leaks the exception text. Every decision comes from a `SessionPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from ipaddress import ip_address
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from inbound.core import reply as replies
from inbound.core.envelope import Connection
from inbound.core.envelope import Envelope as SmtpEnvelope
from inbound.core.reply import SmtpReply
from inbound.receive.connections import ConnectionCounter
from inbound.receive.limits import ReceiverLimits
from inbound.receive.policy import MessageWriter, SessionPolicy

log = logging.getLogger("inbound.receive")

_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}( |$)")
# RFC 3463 codes for aiosmtpd's own replies, which have none.
_DEFAULT_STATUS = {
    "221": "2.0.0", "250": "2.0.0", "220": "2.0.0", "251": "2.1.5", "252": "2.5.0",
    "421": "4.4.2", "451": "4.3.0", "452": "4.5.3", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4",
}  # fmt: skip
# The DATA timeout is an inactivity timeout, re-armed after this many bytes.
_TIMEOUT_RESET_BYTES = 64 * 1024


def with_status(line: str) -> str:
    """Add an RFC 3463 enhanced status code to a reply line that has none."""
    if len(line) < 4 or not line[:3].isdigit() or _ENHANCED.match(line):
        return line
    status = _DEFAULT_STATUS.get(line[:3])
    if status is None:
        return line
    return f"{line[:4]}{status} {line[4:]}"


class _DataState:
    NOMINAL, TOO_MUCH, TOO_LONG, BARE_LINE_ENDING = range(4)


_DATA_REFUSALS = {
    _DataState.TOO_MUCH: replies.MESSAGE_TOO_BIG,
    _DataState.TOO_LONG: replies.LINE_TOO_LONG,
    _DataState.BARE_LINE_ENDING: replies.BARE_LINE_ENDING,
}


class InboundSMTP(SMTP):
    """One SMTP session. Built by `SmtpServer` for each connection."""

    def __init__(
        self,
        policy: SessionPolicy[Any],
        *,
        limits: ReceiverLimits,
        counter: ConnectionCounter,
        hostname: str,
        tls_context: ssl.SSLContext | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # The stream limit bounds command lines and DATA lines alike; DATA lines are checked
        # against max_line_length below, so leave room for a transparent dot and CRLF.
        self.line_length_limit = max(limits.max_line_length + 1, 1001)
        super().__init__(
            _Hooks(),
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="inbound",
            tls_context=tls_context,
            timeout=limits.command_timeout,
            auth_require_tls=True,
            loop=loop,
        )
        self.policy = policy
        self.limits = limits
        self.counter = counter
        self._client_ip = ""
        self._counted = False
        self._bare_replies = False
        self._stopping = False

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._counted:
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if peer else "0.0.0.0"  # noqa: S104 - a value
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.counter.sessions.discard(self)
        if self._counted:
            self._counted = False
            self.counter.release(self._client_ip)
        super().connection_lost(error)

    # -- shutdown ------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and bool(self.envelope.mail_from)

    def shut_down(self) -> None:
        """SIGTERM: an idle session is closed now; one in a transaction after its last reply."""
        self._stopping = True
        if not self.in_transaction:
            self._close_for_shutdown()

    def _close_for_shutdown(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            # RFC 5321 §3.8: 421 when the service is shutting down.
            transport.write(f"{replies.SHUTTING_DOWN}\r\n".encode())
            transport.close()

    async def _handle_client(self) -> None:
        # Refusals come instead of the greeting (RFC 5321 §3.1: 554 then close; 421 for load).
        refusal = self._refusal()
        if refusal is not None:
            self._bare_replies = True
            await self.push(str(refusal))
            if self.transport is not None:
                self.transport.close()
            return
        self._bare_replies = True  # the greeting carries no enhanced status (RFC 2034)
        try:
            await super()._handle_client()
        finally:
            self._bare_replies = False

    def _refusal(self) -> SmtpReply | None:
        if not self.counter.admit(self._client_ip, self.limits):
            return replies.TOO_MANY_CONNECTIONS
        self._counted = True
        self.counter.sessions.add(self)
        try:
            client_ip = ip_address(self._client_ip)
        except ValueError:
            return replies.CLIENT_REFUSED
        return self.policy.connect(client_ip)

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: say why before closing (aiosmtpd closes silently).
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.4.2 Timeout, closing connection\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # -- replies -------------------------------------------------------------------------

    async def push(self, status: str) -> None:  # type: ignore[override]
        if self._bare_replies and status.startswith("220 "):
            self._bare_replies = False  # only the greeting itself
        elif not self._bare_replies:
            status = with_status(status)
        await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        # Never the exception text to the peer (aiosmtpd's default does that).
        log.error(
            "session.failed",
            extra={"event": "session.failed", "error": type(error).__name__},
            exc_info=error,
        )
        return str(replies.INTERNAL_ERROR)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._bare_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._bare_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._bare_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._bare_replies = False

    # -- envelope ------------------------------------------------------------------------

    @property
    def under_tls(self) -> bool:
        return self._tls_protocol is not None

    async def smtp_STARTTLS(self, arg: str) -> None:
        # RFC 3207 §4.2: no second handshake inside TLS (aiosmtpd would start one).
        if self.under_tls:
            await self.push("503 5.5.1 TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._stopping:
            self._close_for_shutdown()
            return
        await super().smtp_MAIL(arg)

    async def smtp_RSET(self, arg: str) -> None:
        await super().smtp_RSET(arg)
        if self._stopping:
            self._close_for_shutdown()

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.envelope is not None
        if self.envelope.mail_from and len(self.envelope.rcpt_tos) >= self.limits.max_recipients:
            await self.push(str(replies.TOO_MANY_RECIPIENTS))
            return
        await super().smtp_RCPT(arg)

    # -- DATA ----------------------------------------------------------------------------

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        message_id, writer = await self.policy.open_message()
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            state, size = await self._receive_data(writer)
        except BaseException:
            writer.abort()
            raise
        envelope = self.envelope
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        if state is None or self.transport is None:
            writer.abort()  # the client went away mid-DATA: nothing was acknowledged
            return
        if state != _DataState.NOMINAL:
            writer.abort()
            await self.push(str(_DATA_REFUSALS[state]))
            if self._stopping:
                self._close_for_shutdown()
            return
        try:
            reply = await self.policy.end_of_data(
                message_id, writer, self._connection(), self._envelope(envelope), size
            )
        except BaseException:
            writer.abort()  # whatever failed, the message was not acknowledged
            raise
        await self.push(str(reply))
        if self._stopping:
            self._close_for_shutdown()

    async def _receive_data(self, writer: MessageWriter) -> tuple[int | None, int]:
        """Stream DATA into `writer` up to CRLF.CRLF; (state, bytes), state None if cut off.

        After a problem the rest is still read (RFC 5321 §4.2.5: reply at the end of data)
        but no longer written."""
        state = _DataState.NOMINAL
        size = since_reset = 0
        max_line = self.limits.max_line_length
        # Only CRLF "." CRLF ends DATA (RFC 5321 §4.1.1.4): a "." line after a bare LF
        # (`\n.\r\n`, the SMTP smuggling sequence) is data, not the end.
        after_crlf = True
        cr_pending = False  # an over-long line was cut just after its CR
        self._reset_timeout(self.limits.data_timeout)
        try:
            while self.transport is not None:
                try:
                    line = await self._reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    chunk = await self._reader.read(exc.consumed)
                    state = _DataState.TOO_LONG if state == _DataState.NOMINAL else state
                    after_crlf, cr_pending = False, chunk.endswith(b"\r")
                    continue
                except asyncio.IncompleteReadError:
                    return None, size
                if line == b".\r\n" and after_crlf:
                    return state, size
                after_crlf = line.endswith(b"\r\n") or (cr_pending and line == b"\n")
                cr_pending = False
                since_reset += len(line)
                if since_reset >= _TIMEOUT_RESET_BYTES:
                    since_reset = 0
                    self._reset_timeout(self.limits.data_timeout)
                if state != _DataState.NOMINAL:
                    continue
                # RFC 5321 §2.3.8: lines end in CRLF. A bare LF or CR is how SMTP smuggling
                # splits one transaction into two elsewhere: the whole message is refused.
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    state = _DataState.BARE_LINE_ENDING
                elif len(line) > max_line + (line[:1] == b"."):  # a transparent dot is extra
                    state = _DataState.TOO_LONG
                else:
                    if line[:1] == b".":
                        line = line[1:]  # RFC 5321 §4.5.2 transparency
                    size += len(line)
                    if size > self.limits.max_message_size:
                        state = _DataState.TOO_MUCH
                    else:
                        writer.write(line)
            return None, size
        finally:
            self._reset_timeout()

    def _connection(self) -> Connection:
        assert self.session is not None
        helo = self.session.host_name or "unknown"
        return Connection(ip_address(self._client_ip), str(helo), self.under_tls)

    @staticmethod
    def _envelope(envelope: Envelope) -> SmtpEnvelope:
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":
            mail_from = ""
        return SmtpEnvelope(mail_from, tuple(envelope.rcpt_tos))


class _Hooks:
    """aiosmtpd handler hooks: EHLO keywords and RCPT decisions through the policy."""

    async def handle_EHLO(
        self,
        server: InboundSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # No AUTH: this is an MX, not a submission server.
        keep = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*keep, "250-PIPELINING", "250 ENHANCEDSTATUSCODES"]

    async def handle_MAIL(
        self,
        server: InboundSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        # The null sender stays "<>" here: aiosmtpd reads an empty mail_from as "no MAIL yet".
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(
        self,
        server: InboundSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        decision = server.policy.recipient(address, tls=server.under_tls)
        known = {a.lower() for a in envelope.rcpt_tos}
        if decision.is_success and address.lower() not in known:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return str(decision)
