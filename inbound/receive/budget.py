"""What one SMTP session may spend: commands that do not advance a transaction, and time.

A connection slot is scarce (`--max-connections`): a client that only sends NOOP, RSET, HELP,
VRFY, a second EHLO or commands that fail would otherwise hold it for ever, since every valid
command re-arms `--command-timeout`. This module decides, from the session's state before and
after a command, whether the command advanced the session, and counts those that did not
(Postfix's `smtpd_junk_command_limit`). It does no I/O; `InboundSMTP` replies and closes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Commands that can never advance a transaction. Counted before they run, so that the command
# over the limit is answered with 421 instead of its own reply. The other commands (EHLO, HELO,
# STARTTLS, MAIL, RCPT, DATA) are judged by their outcome, once they have run.
_NEVER_ADVANCE = frozenset({"NOOP", "RSET", "HELP", "VRFY", "EXPN", "AUTH"})
# QUIT ends the session; it is never junk.
_EXEMPT = frozenset({"QUIT"})


@dataclass(frozen=True, slots=True)
class Progress:
    """The parts of a session's state that a command can advance.

    `envelope` is the transaction's object itself: DATA replaces it once the message has been
    read to its end (whatever the reply), and RSET or EHLO replace it too."""

    greeted: bool  # EHLO/HELO accepted in this session (a completed STARTTLS starts a new one)
    tls: bool  # a TLS handshake completed
    envelope: object
    sender: bool  # MAIL accepted in this transaction
    recipients: int  # recipients accepted in this transaction


def advanced(verb: str, before: Progress, after: Progress) -> bool:
    """Did `verb` move the session forward? RFC 5321 §3.3: a mail transaction is MAIL, one
    or more RCPT, DATA; before it, a greeting (§4.1.1.1) and, optionally, TLS (RFC 3207)."""
    if verb in ("EHLO", "HELO"):
        # The first greeting of a session (or of the TLS session after STARTTLS, which RFC
        # 3207 §4.2 requires); a repeated one only resets the transaction.
        return after.greeted and not before.greeted
    if verb == "STARTTLS":
        return after.tls and not before.tls
    same_transaction = after.envelope is before.envelope
    if verb == "MAIL":
        return same_transaction and after.sender and not before.sender
    if verb == "RCPT":
        return same_transaction and after.recipients > before.recipients
    if verb == "DATA":
        # The message was read to its end: a transaction completed, accepted or refused.
        return not same_transaction
    return False


@dataclass
class CommandBudget:
    """Counts the commands of one session that did not advance it.

    The count starts again when a DATA completes, as Postfix forgives a client's errors once
    a message was received: a long session delivering many messages, with an RSET or a NOOP
    between them, never reaches the limit; a session that never completes a message does.
    """

    limit: int
    junk: int = 0

    def refuses(self, verb: str) -> bool:
        """Before `verb` runs: would it be junk over the limit whatever it does?"""
        return verb in _NEVER_ADVANCE and self.junk >= self.limit

    def record(self, verb: str, before: Progress, after: Progress) -> bool:
        """After `verb` ran: count it; False once the session is over its limit."""
        if verb in _EXEMPT:
            return True
        if advanced(verb, before, after):
            if verb == "DATA":
                self.junk = 0
            return True
        self.junk += 1
        return self.junk <= self.limit

    def refuse(self) -> None:
        """A command answered with 421 instead of running: it is junk too."""
        self.junk += 1
