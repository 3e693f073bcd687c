"""SMTP replies as values, with the named catalogue every stage and every test uses.

Reply codes follow RFC 5321 §4.2 and enhanced status codes RFC 3463. No reply text is ever
built from an exception: an unexpected error is `INTERNAL_ERROR` (451 4.3.0).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    def as_json(self) -> dict[str, object]:
        return {"code": self.code, "status": self.status, "text": self.text}


RECIPIENT_OK = SmtpReply(250, "2.1.5", "Ok")
SENDER_OK = SmtpReply(250, "2.1.0", "Ok")
# RFC 5321 §3.3: a recipient no enabled rule accepts.
MAILBOX_UNAVAILABLE = SmtpReply(550, "5.1.1", "Recipient address rejected: mailbox unavailable")
# SPEC section 3b: an SRS address at a forward's srs_domain whose hash or age does not verify
# (forged, expired, undecodable): as unknown as any mailbox, RFC 3463 X.1.1.
SRS_INVALID = SmtpReply(550, "5.1.1", "Recipient address rejected: not a valid bounce address")
# A domain that is not ours: we are not an open relay (RFC 5321 §3.6.2).
RELAY_DENIED = SmtpReply(550, "5.7.1", "Recipient address rejected: relay access denied")
BAD_RECIPIENT_SYNTAX = SmtpReply(501, "5.1.3", "Bad recipient address syntax")
BAD_SENDER_SYNTAX = SmtpReply(501, "5.1.7", "Bad sender address syntax")
# RFC 6531 §3.4: an address beyond ASCII needs MAIL's SMTPUTF8 parameter; RFC 5248 X.6.7
# ("non-ASCII addresses not permitted for that sender/recipient"); Postfix's text.
UNDECLARED_SMTPUTF8 = SmtpReply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
# RFC 3207 §4: the text SES and Postfix use.
TLS_REQUIRED = SmtpReply(530, "5.7.0", "Must issue a STARTTLS command first")
CLIENT_REFUSED = SmtpReply(554, "5.7.1", "Access denied")
# --proxy-protocol: a PROXY header from an address not trusted to send one (a spoofing attempt).
PROXY_NOT_TRUSTED = SmtpReply(554, "5.7.1", "PROXY header not accepted from this address")
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = SmtpReply(552, "5.3.4", "Message size exceeds fixed maximum message size")
HEADER_TOO_BIG = SmtpReply(552, "5.3.4", "Message header size exceeds fixed maximum header size")
# RFC 5321 §4.5.3.1.6; the whole message is refused, never cut.
LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6)")
BARE_LINE_ENDING = SmtpReply(550, "5.5.2", "Bare CR or LF in message is not allowed")
# RFC 3463 §3.7 X.6.0 (other media error): more parts or nesting than --max-mime-parts and
# --max-mime-depth, for a recipient whose rules need every attachment (SPEC section 7).
MIME_TOO_COMPLEX = SmtpReply(
    554, "5.6.0", "Message has too many MIME parts or levels to check its attachments"
)
INTERNAL_ERROR = SmtpReply(451, "4.3.0", "Temporary server error, please try again later")
# AUTH is not offered (an MX, not a submission server): RFC 5321 §4.2.4.
NOT_IMPLEMENTED = SmtpReply(502, "5.5.1", "Command not implemented")
# RFC 5321 §4.3.2: HELP on a topic the server has no help for.
NO_HELP = SmtpReply(504, "5.5.4", "No help on that topic")
TLS_ACTIVE = SmtpReply(503, "5.5.1", "TLS already active")
TLS_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: STARTTLS")
TLS_READY = SmtpReply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = SmtpReply(454, "4.7.0", "TLS not available")
# RFC 5321 §4.5.3.2: say why before closing.
TIMEOUT = SmtpReply(421, "4.4.2", "Timeout, closing connection")
SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down, try again later")
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Too many connections, try again later")
# Postfix's smtpd_junk_command_limit: NOOP, RSET, a refused MAIL... without a transaction.
TOO_MANY_JUNK_COMMANDS = SmtpReply(421, "4.7.0", "Too many commands without a transaction")
# The fifth unknown verb: RFC 5321 §3.8, a server closes on its own only after a 421.
TOO_MANY_UNKNOWN_COMMANDS = SmtpReply(421, "4.7.0", "Too many unrecognized commands, closing")
# --max-session-time; RFC 3463 X.4.2 as for the other timeouts (RFC 5321 §4.5.3.2).
SESSION_TIME_EXCEEDED = SmtpReply(421, "4.4.2", "Session time limit exceeded, closing connection")


def queued(message_id: str) -> SmtpReply:
    """The reply to DATA once the message is durably spooled (SPEC section 7)."""
    return SmtpReply(250, "2.0.0", f"Ok: queued as {message_id}")
