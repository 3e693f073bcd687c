"""One SMTP session: aiosmtpd's protocol engine with inbound's decisions and hostile-input rules.

What this module adds to aiosmtpd: refusals before the greeting (receipt filters, connection
limits), per-RCPT decisions and the recipient limit, DATA streamed to a writer (data.py), a
STARTTLS that discards all plaintext and counts as TLS only after a completed handshake,
enhanced status codes (RFC 2034) on every reply and no control character echoed in one, and
451 4.3.0 for internal errors instead of aiosmtpd's reply that leaks the exception text. Every
decision comes from a `SessionPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from ipaddress import ip_address
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from inbound.core import reply as replies
from inbound.core.envelope import Connection
from inbound.core.envelope import Envelope as SmtpEnvelope
from inbound.core.reply import SmtpReply
from inbound.observe.log import emit
from inbound.receive.connections import ConnectionCounter
from inbound.receive.data import receive_data
from inbound.receive.limits import ReceiverLimits
from inbound.receive.policy import SessionPolicy
from inbound.receive.reply_line import bounded, sanitized, with_status
from inbound.receive.session import LimitedSMTP
from inbound.receive.starttls import handshake_failure, start_tls

log = logging.getLogger("inbound.receive")


class _MalformedAddressError(Exception):
    """An address in MAIL or RCPT that does not parse; answered with 501 (RFC 5321 §4.1.2)."""


class InboundSMTP(LimitedSMTP):
    """One SMTP session. Built by `SmtpServer` for each connection; what it may spend and
    how it ends are session.py's."""

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
            limits=limits,
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="inbound",
            tls_context=tls_context,
            auth_require_tls=True,
            loop=loop,
        )
        self.policy = policy
        self.counter = counter
        self._client_ip = ""
        self._counted = False
        self._bare_replies = False
        self._stopping = False
        self._answering_data = False
        # Set only by a completed TLS handshake: the one source of the session's TLS facts.
        self._tls_established = False
        # While MAIL or RCPT parses its address: the reply to a malformed one.
        self._address_reply: SmtpReply | None = None

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._counted:
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if peer else "0.0.0.0"  # noqa: S104 - a value
        elif self._original_transport is not None:
            # The TLS layer calls this only once its handshake has completed.
            self._tls_established = True
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
        # After the final dot the envelope is already reset, but the reply to DATA is still
        # to come (scans, the commit): a SIGTERM then must wait for it, or the client sees
        # 421 for a message that is queued a moment later and sends it twice.
        return self._answering_data or (self.envelope is not None and bool(self.envelope.mail_from))

    def shut_down(self) -> None:
        """SIGTERM: an idle session is closed now; one in a transaction after its last reply."""
        self._stopping = True
        if not self.in_transaction:
            self._close_for_shutdown()

    def _close_for_shutdown(self) -> None:
        # RFC 5321 §3.8: 421 when the service is shutting down.
        self._close_saying(replies.SHUTTING_DOWN)

    def _close_saying(self, reply: SmtpReply) -> None:
        """Say `reply` and close, unless the connection is closing already."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"{reply}\r\n".encode())
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
        # RFC 5321 §4.5.3.2: say why before closing (aiosmtpd closes silently). A connection
        # that is gone already (a client that dropped mid-DATA) has nothing left to close:
        # aiosmtpd's version asserts a transport there.
        self._close_saying(replies.TIMEOUT)

    # -- replies -------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The connection is gone or going: under TLS, the socket below may be closing while
        the TLS transport does not know yet."""
        transport, below = self.transport, self._original_transport
        return (
            transport is None
            or transport.is_closing()
            or (below is not None and below.is_closing())
        )

    async def push(self, status: str) -> None:  # type: ignore[override]
        if self.closing:
            # Nobody reads this reply any more, and writing it only makes asyncio log.
            log.debug("reply.dropped", extra={"event": "reply.dropped"})
            return
        status = sanitized(status)
        if self._bare_replies and status.startswith("220 "):
            self._bare_replies = False  # only the greeting itself
        elif not self._bare_replies:
            status = with_status(status)
        await super().push(bounded(status))

    async def handle_exception(self, error: Exception) -> str:
        if self.closing:
            # What fails once the client has gone (a read or write on the closed connection)
            # is the end of the session, not an error of the receiver.
            log.debug("session.ended", extra={"event": "session.ended"})
            return str(replies.INTERNAL_ERROR)  # dropped by push
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
        return self._tls_established

    async def smtp_STARTTLS(self, arg: str) -> None:
        """RFC 3207, replacing aiosmtpd's: nothing sent after STARTTLS and before a completed
        handshake is ever read as a command, however much it is (see starttls.py)."""
        if self._tls_protocol is not None:
            # RFC 3207 §4.2: no second handshake inside TLS (aiosmtpd would start one).
            await self.push(str(replies.TLS_ACTIVE))
            return
        if arg:
            await self.push(str(replies.TLS_SYNTAX))
            return
        if self.tls_context is None:
            await self.push(str(replies.TLS_UNAVAILABLE))
            return
        await self.push(str(replies.TLS_READY))
        transport = self.transport
        if not isinstance(transport, asyncio.Transport) or self.closing:
            return
        tls, handshake = start_tls(self, transport, self._reader, self.tls_context)
        self._tls_protocol, self._original_transport = tls, transport
        self.transport = tls._app_transport
        error: Exception | None = None
        try:
            await handshake
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed handshake is the client's doing
            error = exc
        if not self._tls_established:
            self._tls_failed(error)

    def _tls_failed(self, error: Exception | None) -> None:
        """No completed handshake (it failed, or the connection closed during it): the end."""
        # Scanners and old clients fail handshakes all day: one line at info with who and
        # OpenSSL's reason code (NO_SHARED_CIPHER, UNSUPPORTED_PROTOCOL...), never the
        # exception's text, which may carry what the client sent.
        emit(log, "tls.failed", client_ip=self._client_ip, reason=handshake_failure(error))
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        # The TLS layer tells the session nothing of a connection lost during its handshake.
        self.connection_lost(None)

    async def smtp_AUTH(self, arg: str) -> None:
        # No AUTH on an MX (it is not advertised): aiosmtpd would answer 538 or 535.
        await self.push(str(replies.NOT_IMPLEMENTED))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        try:
            address, rest = super()._getaddr(arg)
        except (IndexError, ValueError):  # the email parser's, on "a@" for one
            address, rest = None, None
        if address is None and self._address_reply is not None:
            raise _MalformedAddressError
        return address, rest

    async def _parsing_address(self, command: Awaitable[None], reply: SmtpReply) -> None:
        """Run aiosmtpd's MAIL or RCPT; a malformed address gets `reply` (501, RFC 3463)."""
        self._address_reply = reply
        try:
            await command
        except _MalformedAddressError:
            await self.push(str(reply))
        finally:
            self._address_reply = None

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._stopping:
            self._close_for_shutdown()
            return
        await self._parsing_address(super().smtp_MAIL(arg), replies.BAD_SENDER_SYNTAX)

    async def smtp_RSET(self, arg: str) -> None:
        await super().smtp_RSET(arg)
        if self._stopping:
            self._close_for_shutdown()

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.envelope is not None
        if self.envelope.mail_from and len(self.envelope.rcpt_tos) >= self.limits.max_recipients:
            await self.push(str(replies.TOO_MANY_RECIPIENTS))
            return
        await self._parsing_address(super().smtp_RCPT(arg), replies.BAD_RECIPIENT_SYNTAX)

    # -- DATA ----------------------------------------------------------------------------

    async def smtp_DATA(self, arg: str | None) -> None:
        self._answering_data = True
        try:
            await self._data(arg)
        finally:
            self._answering_data = False

    async def _data(self, arg: str | None) -> None:
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
            result = await receive_data(self._reader, writer, self.limits, self._data_alive)
        except BaseException:
            writer.abort()
            raise
        finally:
            if self.transport is not None:  # back to the command timeout
                self._reset_timeout()
        envelope = self.envelope
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        if result is None or self.transport is None:
            writer.abort()  # the client went away mid-DATA: nothing was acknowledged
            facts, sent = self.connection_facts(), self._envelope(envelope)
            emit(
                log,
                "message.abandoned",
                message_id=message_id,
                client_ip=str(facts.client_ip),
                helo=facts.helo,
                sender=sent.mail_from,
                recipients=list(sent.rcpt_tos),
            )
            return
        refusal = result.outcome.refusal
        if refusal is not None:
            writer.abort()
            self.policy.refused(
                message_id,
                self.connection_facts(),
                self._envelope(envelope),
                refusal,
                reason=result.outcome.name.lower(),
                error=None if result.error is None else type(result.error).__name__,
            )
            await self.push(str(refusal))
            if self._stopping:
                self._close_for_shutdown()
            return
        try:
            reply = await self.policy.end_of_data(
                message_id, writer, self.connection_facts(), self._envelope(envelope), result.size
            )
        except BaseException:
            writer.abort()  # whatever failed, the message was not acknowledged
            raise
        await self.push(str(reply))
        if self._stopping:
            self._close_for_shutdown()

    def _data_alive(self) -> None:
        self._reset_timeout(self.limits.data_timeout)

    def connection_facts(self) -> Connection:
        """Who the client is, as the policy and the logs see it."""
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
        if address.lower() == "postmaster":
            # RFC 5321 §4.5.1: "Postmaster" without a domain must be accepted; it stands for
            # the policy's own postmaster address, so rules see a whole address.
            address = server.policy.postmaster()
        sender = envelope.mail_from or ""
        decision = server.policy.recipient(
            address, server.connection_facts(), "" if sender == "<>" else sender
        )
        known = {a.lower() for a in envelope.rcpt_tos}
        if decision.is_success and address.lower() not in known:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return str(decision)
