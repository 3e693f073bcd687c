"""One SMTP session: inbound's own engine (engine.py, commands.py) with inbound's decisions.

What this module adds: behind `--proxy-protocol`, the client's address from the balancer's
PROXY header (proxy.py); refusals before the greeting (receipt filters, connection limits),
per-RCPT decisions and the recipient limit through a `SessionPolicy`, DATA streamed to the
policy's writer and its end answered after the commit, STARTTLS (RFC 3207) on asyncio's TLS
layer where nothing sent before a completed handshake is ever read as a command, and the
session's part in a shutdown (SIGTERM: idle sessions end now, others after their reply).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from ipaddress import ip_address
from typing import Any

from inbound.core import reply as replies
from inbound.core.envelope import Connection
from inbound.core.envelope import Envelope as SmtpEnvelope
from inbound.core.reply import SmtpReply
from inbound.observe.log import emit, emit_fields
from inbound.receive.commands import SmtpCommands, commands
from inbound.receive.connections import ConnectionCounter
from inbound.receive.data import DataScanner
from inbound.receive.limits import ReceiverLimits
from inbound.receive.policy import MessageWriter, SessionPolicy
from inbound.receive.proxy import ProxyHeaderError, ProxyTrust, looks_like_header, parse
from inbound.receive.session import (
    DATA_SYNTAX,
    NEED_RCPT,
    SEND_HELO,
    START_DATA,
    Greeting,
    Transaction,
    echoed,
    wire,
)

log = logging.getLogger("inbound.receive")


class InboundSMTP(SmtpCommands):
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
        proxies: ProxyTrust | None = None,
    ) -> None:
        super().__init__(limits, loop, hostname, tls_context)
        self.policy = policy
        self.counter = counter
        self.proxies = proxies
        self._client_ip = ""
        self._counted = False
        # --proxy-protocol: the balancer's address once a header named the client's; the bytes
        # of a header still being read (from a trusted address) or sniffed (from another).
        self.proxy_ip: str | None = None
        self._header: bytearray | None = None
        self._sniffed: bytes | None = None
        # From the 354 to the reply after the end of data (the commit included).
        self._answering_data = False
        self._message: tuple[str, MessageWriter] | None = None

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self._client_ip = str(peer[0]) if peer else "0.0.0.0"  # noqa: S104 - a value
        if self.proxies is not None:
            if self.proxies.trusts(self._client_ip):
                self._await_header()
                return
            self._sniffed = b""
        self.greet()

    def greet(self) -> None:
        # Refusals come instead of the greeting (RFC 5321 §3.1: 554 then close; 421 for load).
        refusal = self._refusal()
        if refusal is not None:
            self.close_saying(wire(refusal))
            return
        self.start_lifetime()
        # The greeting carries no enhanced status code (RFC 2034 §3).
        self.say(echoed(f"220 {self.hostname} inbound", status=False))
        self.flush()
        self.touch()

    def _refusal(self) -> SmtpReply | None:
        if not self.counter.admit(self._client_ip, self.limits):
            return replies.TOO_MANY_CONNECTIONS
        self._counted = True
        self.counter.sessions.add(self)
        try:
            connection = self.connection_facts()
        except ValueError:
            return replies.CLIENT_REFUSED
        return self.policy.connect(connection)

    # -- the PROXY protocol (proxy.py) ---------------------------------------------------

    def _await_header(self) -> None:
        """A trusted balancer speaks first: its header, then the greeting (the spec, section 1:
        "The receiver MUST NOT start processing the connection before it receives a complete
        and valid PROXY protocol header"). Only the session table has it meanwhile (a SIGTERM
        ends it); it is counted against the limits once its client's address is known."""
        self._header = bytearray()
        self.counter.sessions.add(self)
        # Absolute, not renewed by each byte: a header comes in one segment, and a slowloris
        # one byte at a time gets no more time than a silent peer.
        self.touch(self.proxies.header_timeout(self.limits) if self.proxies else None)

    def data_received(self, data: bytes) -> None:
        if self._header is not None:
            self._read_header(data)
        elif self._sniffed is not None:
            self._sniff(data)
        else:
            super().data_received(data)

    def _read_header(self, data: bytes) -> None:
        assert self._header is not None
        if self.closing or self.lost:
            return
        self._header += data
        try:
            header = parse(bytes(self._header))
        except ProxyHeaderError as error:
            self._refuse_proxy(error.reason)
            return
        if header is None:
            return
        rest = bytes(self._header[header.length :])
        self._header = None
        self.stop_timer()
        if header.source is not None:
            self.proxy_ip, self._client_ip = self._client_ip, str(header.source)
        self.counter.sessions.discard(self)  # `greet` adds it back once counted
        self.greet()
        if rest and not (self.closing or self.lost):
            super().data_received(rest)  # the client's own first bytes, early

    def _refuse_proxy(self, reason: str) -> None:
        """A trusted peer without a valid header is no SMTP client and no balancer we know:
        closed with no reply (the spec, section 2.1: "abort the connection"). Postfix's smtpd
        with `smtpd_upstream_proxy_protocol = haproxy` hangs up too: without the address "we
        can't maintain an audit trail or enforce access control" (smtpd_peer.c)."""
        emit(log, "proxy.refused", level=logging.WARNING, reason=reason, proxy_ip=self._client_ip)
        self._header = None
        self.close()

    def _sniff(self, data: bytes) -> None:
        """From an untrusted address, a connection that starts with a PROXY header is an
        attempt to choose its own address: refused, its address never read."""
        assert self._sniffed is not None
        sniffed = self._sniffed + data
        verdict = looks_like_header(sniffed)
        if verdict is None:
            # "PROX", or the v2 signature's first octets (at most 11): wait for the rest,
            # within the command timeout that runs since the greeting.
            self._sniffed = sniffed
            return
        self._sniffed = None
        if verdict:
            refused = {"reason": "untrusted", "client_ip": self._client_ip}
            emit_fields(log, "proxy.refused", refused, level=logging.WARNING)
            self.close_saying(wire(replies.PROXY_NOT_TRUSTED))
            return
        super().data_received(sniffed)

    def on_timeout(self) -> None:
        if self._header is not None:
            self._refuse_proxy("timeout")
            return
        super().on_timeout()

    def eof_received(self) -> bool:
        if self._header is not None and not self.closing:
            self._refuse_proxy("truncated" if self._header else "missing")
            return False
        return super().eof_received()

    def on_lost(self) -> None:
        self.stop_lifetime()
        self.counter.sessions.discard(self)
        if self._counted:
            self._counted = False
            self.counter.release(self._client_ip)

    def peer_fields(self) -> dict[str, str]:
        if self.proxy_ip is None:
            return {"client_ip": self._client_ip}
        return {"client_ip": self._client_ip, "proxy_ip": self.proxy_ip}

    # -- shutdown ------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        # After the final dot the transaction is already reset, but the reply to DATA is still
        # to come (scans, the commit): a SIGTERM then must wait for it, or the client sees
        # 421 for a message that is queued a moment later and sends it twice.
        return self._answering_data or self.transaction.mail_from is not None

    def shut_down(self) -> None:
        """SIGTERM: an idle session is closed now; one in a transaction after its last reply."""
        self.stopping = True
        if not self.in_transaction:
            self.close_for_shutdown()

    # -- the policy's part ---------------------------------------------------------------

    def connection_facts(self) -> Connection:
        """Who the client is, as the policy and the logs see it."""
        helo = self.greeting.helo or "unknown"
        proxy = None if self.proxy_ip is None else ip_address(self.proxy_ip)
        return Connection(ip_address(self._client_ip), helo, self.greeting.tls, proxy)

    def recipient(self, address: str) -> SmtpReply:
        if address.lower() == "postmaster":
            # RFC 5321 §4.5.1: "Postmaster" without a domain must be accepted; it stands for
            # the policy's own postmaster address, so rules see a whole address.
            address = self.policy.postmaster()
        transaction = self.transaction
        sender = transaction.mail_from or ""
        decision = self.policy.recipient(address, self.connection_facts(), sender)
        known = {a.lower() for a in transaction.rcpt_tos}
        if decision.is_success and address.lower() not in known:
            transaction.rcpt_tos.append(address)
        return decision

    @staticmethod
    def _envelope(transaction: Transaction) -> SmtpEnvelope:
        return SmtpEnvelope(transaction.mail_from or "", tuple(transaction.rcpt_tos))

    # -- DATA ----------------------------------------------------------------------------

    def data(self, arg: str | None) -> None:
        if self.greeting.helo is None:
            self.say(SEND_HELO)
        elif not self.transaction.rcpt_tos:
            self.say(NEED_RCPT)
        elif arg:
            self.say(DATA_SYNTAX)
        else:
            self._answering_data = True
            self.run(self._open_message())

    async def _open_message(self) -> None:
        try:
            message_id, writer = await self.policy.open_message()
        except BaseException:
            self._answering_data = False
            raise
        self._message = (message_id, writer)
        self.scanner = DataScanner(writer, self.limits)
        self.say(START_DATA)
        self.touch(self.limits.data_timeout)

    def data_ended(self) -> None:
        scanner, self.scanner = self.scanner, None
        assert scanner is not None
        assert self._message is not None
        message_id, writer = self._message
        self._message = None
        result = scanner.result()
        envelope = self._envelope(self.transaction)
        self.transaction = Transaction()
        refusal = result.outcome.refusal
        if refusal is None:
            self.run(self._commit(message_id, writer, envelope, result.size))
            return
        writer.abort()
        self.policy.refused(
            message_id,
            self.connection_facts(),
            envelope,
            refusal,
            reason=result.outcome.name.lower(),
            error=None if result.error is None else type(result.error).__name__,
        )
        self._answered(refusal)

    async def _commit(
        self, message_id: str, writer: MessageWriter, envelope: SmtpEnvelope, size: int
    ) -> None:
        try:
            reply = await self.policy.end_of_data(
                message_id, writer, self.connection_facts(), envelope, size
            )
        except BaseException:
            self._answering_data = False
            writer.abort()  # whatever failed, the message was not acknowledged
            raise
        self._answered(reply)

    def _answered(self, reply: SmtpReply) -> None:
        self._answering_data = False
        self.say(echoed(str(reply)))
        self.command_done()
        if self.stopping:
            self.close_for_shutdown()

    def scanner_abandoned(self) -> None:
        """The connection ended mid-DATA: nothing was acknowledged."""
        if self.scanner is None or self._message is None:
            return
        self.scanner = None
        message_id, writer = self._message
        self._message = None
        self._answering_data = False
        writer.abort()
        facts, sent = self.connection_facts(), self._envelope(self.transaction)
        emit(
            log,
            "message.abandoned",
            message_id=message_id,
            client_ip=str(facts.client_ip),
            helo=facts.helo,
            sender=sent.mail_from,
            recipients=list(sent.rcpt_tos),
        )

    # -- STARTTLS ------------------------------------------------------------------------

    def starttls(self, arg: str | None) -> None:
        """RFC 3207: nothing sent after STARTTLS and before a completed handshake is ever read
        as a command, however much it is."""
        if self.greeting.tls:
            # RFC 3207 §4.2: no second handshake inside TLS.
            self.say(wire(replies.TLS_ACTIVE))
        elif arg:
            self.say(wire(replies.TLS_SYNTAX))
        elif self.tls_context is None:
            self.say(wire(replies.TLS_UNAVAILABLE))
        else:
            self.say(wire(replies.TLS_READY))
            self.discard_input()
            self.run(self._handshake(self.tls_context))

    async def _handshake(self, context: ssl.SSLContext) -> None:
        transport = self.transport
        assert transport is not None
        error: Exception | None = None
        tls: asyncio.Transport | None = None
        try:
            tls = await self.loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.limits.command_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed handshake is the client's doing
            error = exc
        if tls is None or self.lost:
            # Scanners and old clients fail handshakes all day: one line at info with who and
            # OpenSSL's reason code, never the exception's text (it may carry client bytes).
            fields = {"reason": handshake_failure(error), **self.peer_fields()}
            emit_fields(log, "tls.failed", fields)
            self.closing = True
            if not transport.is_closing():
                transport.close()
            # The TLS layer tells the session nothing of a connection lost in its handshake.
            self.connection_lost(None)
            return
        self.tls_started(tls)
        # RFC 3207 §4.2: the client's knowledge from before TLS is discarded.
        self.greeting = Greeting(tls=True)
        self.transaction = Transaction()
        self.command_done()


def handshake_failure(error: Exception | None) -> str:
    """Why a handshake failed, for the log: OpenSSL's reason code (`NO_SHARED_CIPHER`,
    `UNSUPPORTED_PROTOCOL`...), or the kind of failure; never the error's text."""
    if error is None:
        return "CONNECTION_CLOSED"
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    if isinstance(reason, str) and re.fullmatch(r"[A-Z0-9_]{1,64}", reason):
        return reason
    return type(error).__name__


InboundSMTP.COMMANDS = commands(DATA=InboundSMTP.data, STARTTLS=InboundSMTP.starttls)
