"""The SMTP commands: state rules and replies of every verb but DATA and STARTTLS (smtp.py).

It owns the command grammar and sequencing of RFC 5321 §4.1 as the receiver answers them:
503 out of sequence, 501 for syntax (RFC 3463 5.5.4, or 5.1.7 / 5.1.3 for a bad address),
HELO/EHLO with the keywords advertised, MAIL parameters (SIZE, BODY, SMTPUTF8), RCPT decisions
through `recipient` (smtp.py asks the policy), RSET, NOOP, QUIT, VRFY, EXPN, HELP and AUTH
(not offered: an MX). It also counts what a session may spend (budget.py: junk commands, five
unknown verbs, `--max-session-time`). Handlers are found in a dict built once per class.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from inbound.core import reply as replies
from inbound.core.reply import SmtpReply
from inbound.observe.log import emit_fields
from inbound.receive import session as say
from inbound.receive.address import (
    ParamError,
    mail_params,
    parse_mailbox,
    parse_params,
    parse_path,
)
from inbound.receive.budget import CommandBudget, Progress
from inbound.receive.engine import Handler, SmtpEngine
from inbound.receive.limits import ReceiverLimits
from inbound.receive.session import (
    MAIL_EXTRA_SIZE,
    MAIL_EXTRA_SMTPUTF8,
    Greeting,
    Transaction,
    echoed,
    parse_command,
    progress,
    wire,
)

log = logging.getLogger("inbound.receive")

# The fifth unknown verb gets "421 4.7.0" and the session ends (RFC 5321 §3.8): aiosmtpd's count.
UNKNOWN_LIMIT = 5

_PARAM_REPLIES = {
    ParamError.BODY: say.BAD_BODY,
    ParamError.SMTPUTF8_VALUE: say.SMTPUTF8_VALUE,
    ParamError.TOO_BIG: say.SIZE_TOO_BIG,
    ParamError.UNKNOWN: say.MAIL_PARAMS_UNKNOWN,
}


def _ehlo_reply(hostname: str, max_size: int, starttls: bool) -> bytes:
    lines = [f"250-{hostname}"]
    if max_size:
        lines.append(f"250-SIZE {max_size}")  # RFC 1870
    lines += ["250-8BITMIME", "250-SMTPUTF8"]  # RFC 6152, RFC 6531
    if starttls:
        lines.append("250-STARTTLS")  # RFC 3207; no AUTH: an MX, not a submission server
    lines += ["250-PIPELINING", "250 ENHANCEDSTATUSCODES"]  # RFC 2920, RFC 2034
    return b"".join(echoed(line, status=False) for line in lines)


# The EHLO reply of each (hostname, SIZE, STARTTLS offered), built once.
_EHLO_REPLIES: dict[tuple[str, int, bool], bytes] = {}


class SmtpCommands(SmtpEngine):
    """The session's state and its commands."""

    def __init__(
        self,
        limits: ReceiverLimits,
        loop: asyncio.AbstractEventLoop,
        hostname: str,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(limits, loop)
        self.hostname = hostname
        self.tls_context = tls_context
        self.greeting = Greeting()
        self.transaction = Transaction()
        self.stopping = False
        self.expired = False
        self._budget = CommandBudget(limits.max_junk_commands)
        self._unknown = 0
        self._verb: str | None = None  # the command being answered
        self._before: Progress | None = None
        self._lifetime: asyncio.TimerHandle | None = None

    def peer_fields(self) -> dict[str, str]:
        """Who the client is, for a log line: `client_ip`, and `proxy_ip` behind a balancer."""
        raise NotImplementedError

    def recipient(self, address: str) -> SmtpReply:
        raise NotImplementedError

    def close_for_shutdown(self) -> None:
        # RFC 5321 §3.8: 421 when the service is shutting down.
        self.close_saying(wire(replies.SHUTTING_DOWN))

    # -- dispatch ------------------------------------------------------------------------

    def dispatch_line(self, line: bytes) -> None:
        parsed = parse_command(line)
        if parsed is None:
            self.say(say.BAD_SYNTAX)
            return
        verb, arg = parsed
        if say.line_length(line) > say.command_limit(verb, self.greeting):
            self.say(say.LINE_TOO_LONG)
            return
        handler = self.COMMANDS.get(verb)
        if handler is None:
            self._unknown += 1
            if self._unknown >= UNKNOWN_LIMIT:
                self.limited(replies.TOO_MANY_UNKNOWN_COMMANDS, "unknown_commands")
                return
            self.say(echoed(f'500 Error: command "{verb}" not recognized'))
            return
        self.touch()
        if self._budget.refuses(verb):
            self.limited(replies.TOO_MANY_JUNK_COMMANDS, "junk_commands")
            return
        self._verb, self._before = verb, progress(self.greeting, self.transaction)
        handler(self, arg)
        if not (self.working or self.scanner is not None):
            self.command_done()

    def command_done(self) -> None:
        """The command has answered: count it, then end the session if its time is over."""
        verb, before = self._verb, self._before
        self._verb = self._before = None
        if verb is None or before is None:
            return
        within = self._budget.record(verb, before, progress(self.greeting, self.transaction))
        if self.closing or self.lost:
            return
        if self.eof:  # the client half-closed during this command: it is answered, the end
            self.close()
            return
        self.touch()  # from its reply on, the client has --command-timeout again
        if not within:
            self.limited(replies.TOO_MANY_JUNK_COMMANDS, "junk_commands")
        elif self.expired:
            self.limited(replies.SESSION_TIME_EXCEEDED, "lifetime")

    def limited(self, reply: SmtpReply, reason: str) -> None:
        """A limit is reached: say so and end; nothing pipelined after it runs."""
        emit_fields(log, "session.limited", {"reason": reason, **self.peer_fields()})
        self.close_saying(wire(reply))

    def start_lifetime(self) -> None:
        self._lifetime = self.loop.call_later(self.limits.max_session_time, self._expire)

    def stop_lifetime(self) -> None:
        if self._lifetime is not None:
            self._lifetime.cancel()

    def _expire(self, grace_over: bool = False) -> None:
        """`--max-session-time` is over: an idle session ends now with 421 4.4.2; one in a
        command ends after that command's reply, and a DATA still streaming gets at most
        `--data-timeout` more, so a slow sender's message is not cut at the last byte."""
        self.expired = True
        busy = self.working or self.scanner is not None
        if busy and not grace_over:
            self._lifetime = self.loop.call_later(self.limits.data_timeout, self._expire, True)
            return
        if self.closing or self.lost:
            return
        emit_fields(log, "session.limited", {"reason": "lifetime", **self.peer_fields()})
        self.close_saying(wire(replies.SESSION_TIME_EXCEEDED))

    # -- the commands --------------------------------------------------------------------

    def helo(self, arg: str | None) -> None:
        if not arg:
            self.say(echoed("501 Syntax: HELO hostname", status=False))
            return
        self.transaction = Transaction()
        self.greeting.extended = False
        self.greeting.helo = arg
        self.say(echoed(f"250 {self.hostname}", status=False))

    def ehlo(self, arg: str | None) -> None:
        if not arg:
            self.say(echoed("501 Syntax: EHLO hostname", status=False))
            return
        self.transaction = Transaction()
        greeting = self.greeting
        greeting.extended = True
        greeting.helo = arg
        if self.limits.max_message_size:
            greeting.mail_limit += MAIL_EXTRA_SIZE
        greeting.mail_limit += MAIL_EXTRA_SMTPUTF8
        starttls = self.tls_context is not None and not greeting.tls
        key = (self.hostname, self.limits.max_message_size, starttls)
        reply = _EHLO_REPLIES.get(key)
        if reply is None:
            reply = _EHLO_REPLIES[key] = _ehlo_reply(*key)
        self.say(reply)

    def noop(self, arg: str | None) -> None:
        self.say(say.OK)

    def rset(self, arg: str | None) -> None:
        if arg:
            self.say(echoed("501 Syntax: RSET"))
            return
        self.transaction = Transaction()
        self.say(say.OK)
        if self.stopping:
            self.close_for_shutdown()

    def quit(self, arg: str | None) -> None:
        if arg:
            self.say(echoed("501 Syntax: QUIT"))
            return
        self.close_saying(say.BYE)

    def vrfy(self, arg: str | None) -> None:
        if not arg:
            self.say(say.VRFY_SYNTAX)
        elif parse_path(arg) is None and parse_mailbox(arg) is None:
            self.say(echoed("502 Could not VRFY " + arg))
        else:
            self.say(say.CANNOT_VRFY)  # RFC 5321 §3.5.3: 252, nothing is disclosed

    def expn(self, arg: str | None) -> None:
        self.say(say.NO_EXPN)

    def help(self, arg: str | None) -> None:
        # RFC 5321 §4.1.1.8, §4.3.2: 214 with the commands, or with the syntax of the one
        # asked about; 504 for a topic without help (STARTTLS has none when not offered).
        offered = self.tls_context is not None
        if not arg:
            self.say(say.HELP_LIST_TLS if offered else say.HELP_LIST)
            return
        topic = arg.upper()
        reply = say.HELP_TOPICS.get(topic)
        if reply is None or (topic == "STARTTLS" and not offered):
            self.say(wire(replies.NO_HELP))
            return
        self.say(reply)

    def auth(self, arg: str | None) -> None:
        # No AUTH on an MX (it is not advertised): RFC 5321 §4.2.4.
        self.say(wire(replies.NOT_IMPLEMENTED))

    def _syntax(self, usage: str) -> bytes:
        extended = " [SP <mail-parameters>]" if self.greeting.extended else ""
        return echoed(f"501 Syntax: {usage}{extended}")

    def mail(self, arg: str | None) -> None:
        if self.stopping:
            self.close_for_shutdown()
            return
        if self.greeting.helo is None:
            self.say(say.SEND_HELO)
            return
        if arg is None or arg[:5].upper() != "FROM:" or not arg[5:].strip():
            self.say(self._syntax("MAIL FROM: <address>"))
            return
        path = parse_path(arg[5:].strip())
        if path is None:
            self.say(wire(replies.BAD_SENDER_SYNTAX))
            return
        if not self.greeting.extended and path.params:
            self.say(self._syntax("MAIL FROM: <address>"))
            return
        transaction = self.transaction
        if transaction.mail_from is not None:
            self.say(say.NESTED_MAIL)
            return
        params = mail_params(path.params, self.limits.max_message_size)
        if isinstance(params, ParamError):
            reply = _PARAM_REPLIES.get(params)
            self.say(reply if reply is not None else self._syntax("MAIL FROM: <address>"))
            return
        if path.local_only:
            # RFC 5321 §4.1.2: a reverse path is a Mailbox, local part "@" domain; only a
            # recipient <Postmaster> may lack the domain (§4.1.1.3). Checked after the
            # parameters, so "MAIL FROM: Name <address>" stays a 501 5.5.4 for its syntax.
            self.say(wire(replies.BAD_SENDER_SYNTAX))
            return
        if not (params.smtputf8 or path.address.isascii()):
            # RFC 6531 §3.4: without SMTPUTF8 the envelope is ASCII (RFC 5321 §4.1.2).
            self.say(wire(replies.UNDECLARED_SMTPUTF8))
            return
        transaction.mail_from = path.address
        transaction.mail_options = path.params.upper().split()
        transaction.smtputf8 = params.smtputf8
        self.say(wire(replies.SENDER_OK))

    def rcpt(self, arg: str | None) -> None:
        transaction = self.transaction
        if (
            transaction.mail_from is not None
            and len(transaction.rcpt_tos) >= self.limits.max_recipients
        ):
            self.say(wire(replies.TOO_MANY_RECIPIENTS))
            return
        if self.greeting.helo is None:
            self.say(say.SEND_HELO)
            return
        if transaction.mail_from is None:
            self.say(say.NEED_MAIL)
            return
        if arg is None or arg[:3].upper() != "TO:" or not arg[3:].strip():
            self.say(self._syntax("RCPT TO: <address>"))
            return
        path = parse_path(arg[3:].strip())
        if path is None or not path.address:  # no null forward path (RFC 5321 §4.1.1.3)
            self.say(wire(replies.BAD_RECIPIENT_SYNTAX))
            return
        if not self.greeting.extended and path.params:
            self.say(self._syntax("RCPT TO: <address>"))
            return
        params = parse_params(path.params)
        if params is None:
            self.say(self._syntax("RCPT TO: <address>"))
            return
        if params:
            self.say(say.RCPT_PARAMS_UNKNOWN)
            return
        if not (transaction.smtputf8 or path.address.isascii()):
            # RFC 6531 §3.4: a recipient beyond ASCII needs a MAIL that said SMTPUTF8.
            self.say(wire(replies.UNDECLARED_SMTPUTF8))
            return
        self.say(echoed(str(self.recipient(path.address))))


def commands(**extra: Handler) -> dict[str, Handler]:
    """The verb table of `SmtpCommands`, with `extra` verbs (DATA, STARTTLS) added."""
    table: dict[str, Any] = {
        "HELO": SmtpCommands.helo,
        "EHLO": SmtpCommands.ehlo,
        "NOOP": SmtpCommands.noop,
        "RSET": SmtpCommands.rset,
        "QUIT": SmtpCommands.quit,
        "VRFY": SmtpCommands.vrfy,
        "EXPN": SmtpCommands.expn,
        "HELP": SmtpCommands.help,
        "AUTH": SmtpCommands.auth,
        "MAIL": SmtpCommands.mail,
        "RCPT": SmtpCommands.rcpt,
    }
    table.update(extra)
    return table
