"""The life of one SMTP session under aiosmtpd: what it may spend, and how it ends.

`LimitedSMTP` is aiosmtpd's `SMTP` with: commands that do not advance a transaction counted
(`--max-junk-commands`, then 421 4.7.0; budget.py says what advances), a lifetime
(`--max-session-time`, then 421 4.4.2), the command timeout kept for waiting on the client
(never running while the server itself works on a command), a half-close that lets the command
in progress answer, and per-session command size limits. `InboundSMTP` (smtp.py) builds on it;
this module makes no decision about mail.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP

from inbound.core import reply as replies
from inbound.core.reply import SmtpReply
from inbound.observe.log import emit
from inbound.receive.budget import CommandBudget, Progress
from inbound.receive.limits import ReceiverLimits

log = logging.getLogger("inbound.receive")

_Command = Callable[[str | None], Awaitable[None]]


class LimitedSMTP(SMTP):
    """aiosmtpd's session with inbound's limits on how long and on what it runs."""

    def __init__(self, handler: Any, *, limits: ReceiverLimits, **options: Any) -> None:
        # aiosmtpd keeps these limits in one dict on the class: every EHLO of any session
        # raised MAIL's limit for all of them, and every new connection reset it mid-session.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, timeout=limits.command_timeout, **options)
        self.limits = limits
        self._budget = CommandBudget(limits.max_junk_commands)
        self._running: str | None = None  # the command being carried out, if any
        self._lifetime: asyncio.TimerHandle | None = None
        self._expired = False
        self._eof = False  # the client half-closed while a command was in progress
        self._ended = False  # by `_end_session`: no command is read, no timer armed any more
        self._lost = False
        self._smtp_methods = {
            verb: self._budgeted(verb, method) for verb, method in self._smtp_methods.items()
        }

    @property
    def under_tls(self) -> bool:
        """A TLS handshake has completed (smtp.py knows when)."""
        return False

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else ""

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._lifetime is None:  # not again for the TLS layer after STARTTLS
            self._lifetime = self.loop.call_later(
                self.limits.max_session_time, self._session_expired
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._lost = True
        if self._lifetime is not None:
            self._lifetime.cancel()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        # A client may half-close once it has sent everything, e.g. right after the end of
        # DATA: aiosmtpd cancelled the command in progress then, so a message being committed
        # got no 250 (or, cancelled mid-commit, was queued unacknowledged). The command in
        # progress finishes and answers, then the session ends (as aiosmtpd would have ended
        # it had the end come just after): commands buffered behind it are not read.
        if self._running is None or self._tls_protocol is not None:
            return super().eof_received()
        self._eof = True
        return asyncio.StreamReaderProtocol.eof_received(self)  # a DATA being read sees the end

    # -- commands ------------------------------------------------------------------------

    def _budgeted(self, verb: str, method: _Command) -> _Command:
        """`method` as aiosmtpd dispatches it, counted against the junk-command limit and
        followed by the session's end once its lifetime is over."""

        @functools.wraps(method)  # keeps the HELP text aiosmtpd reads from the method
        async def run(arg: str | None) -> None:
            if self._budget.refuses(verb):
                await self._close_with(replies.TOO_MANY_JUNK_COMMANDS, "junk_commands")
                return
            before = self._progress()
            self._running = verb
            try:
                await method(arg)
            finally:
                # A command that raised (451 4.3.0) did not advance the session either.
                self._running = None
                within = self._budget.record(verb, before, self._progress())
                if self._eof:  # the client half-closed during this command: it is answered
                    self._end_session()
            if self.transport is None:
                return
            self._reset_timeout()  # from its reply on, the client has --command-timeout again
            if not within:
                await self._close_with(replies.TOO_MANY_JUNK_COMMANDS, "junk_commands")
            elif self._expired:
                await self._close_with(replies.SESSION_TIME_EXCEEDED, "lifetime")

        return run

    def _progress(self) -> Progress:
        envelope = self.envelope
        return Progress(
            greeted=self.session is not None and self.session.host_name is not None,
            tls=self.under_tls,
            envelope=envelope,
            sender=envelope is not None and bool(envelope.mail_from),
            recipients=len(envelope.rcpt_tos) if envelope is not None else 0,
        )

    # -- timeouts and the end ------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        # RFC 5321 §4.5.3.2.7: the server's timeout is for awaiting the client. A command that
        # re-arms the command timeout while it runs (the end of DATA: scans, the spool's fsync)
        # is doing the server's own work: a timeout then closed the connection mid-commit and
        # the message was queued without its 250. The timer restarts once it has answered
        # (`_budgeted`), and none is armed once the session has ended.
        if (duration is None and self._running is not None) or self._lost or self._ended:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            return
        super()._reset_timeout(duration)

    async def _close_with(self, reply: SmtpReply, reason: str) -> None:
        """From within a command: the reply, then close; nothing pipelined after it runs."""
        emit(log, "session.limited", reason=reason, client_ip=self.peer_ip)
        await self.push(str(reply))
        self._end_session()

    def _end_session(self) -> None:
        # As aiosmtpd's QUIT, and more: no further buffered command is read once the reply is
        # out (aiosmtpd's loop runs while there is a transport; a line already buffered would
        # be read before the cancellation takes effect), and no timeout fires on the way out.
        self._ended = True
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _session_expired(self, grace_over: bool = False) -> None:
        """`--max-session-time` is over: an idle session ends now with 421 4.4.2; one in a
        command ends after that command's reply, and a DATA still streaming gets at most
        `--data-timeout` more, so a slow sender's message is not cut at the last byte."""
        self._expired = True
        if self._running is not None and not grace_over:
            self._lifetime = self.loop.call_later(
                self.limits.data_timeout, self._session_expired, True
            )
            return
        emit(log, "session.limited", reason="lifetime", client_ip=self.peer_ip)
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"{replies.SESSION_TIME_EXCEEDED}\r\n".encode())
        self._end_session()
