"""What one SMTP session knows, and the wire form of what it says.

`Greeting` and `Transaction` are the session's state (RFC 5321 §4.1.4: a greeting, then
transactions of MAIL, RCPT and DATA); `progress` is what budget.py judges commands by.
`parse_command` splits a command line into its verb and argument as the receiver always did,
and the reply helpers turn catalogue entries and echoed text into reply lines (reply_line.py).
This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inbound.core.reply import SmtpReply
from inbound.receive.budget import Progress
from inbound.receive.reply_line import bounded, sanitized, with_status

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, CRLF included. MAIL may grow by
# what its advertised parameters add (RFC 1870 §3: 26 for SIZE; RFC 6531 §3.4: 10 for
# SMTPUTF8), counted again for every EHLO, as the receiver always did.
COMMAND_LIMIT = 512
MAIL_EXTRA_SIZE = 26
MAIL_EXTRA_SMTPUTF8 = 10
# A line without LF longer than this is being sent to exhaust memory: it is discarded to its
# end, then answered "500 Command line too long".
LINE_BUFFER_LIMIT = 1001

# HELP's answers (RFC 5321 §4.1.1.8, §4.3.2: 214): the commands the receiver implements, and
# the syntax of each. EXPN and AUTH are known verbs but not implemented (502): no help on them.
HELP_SYNTAX = {
    "DATA": "DATA",
    "EHLO": "EHLO <domain>",
    "HELO": "HELO <domain>",
    "HELP": "HELP [<command>]",
    "MAIL": "MAIL FROM:<address> [SIZE=<size>] [BODY=7BIT|8BITMIME] [SMTPUTF8]",
    "NOOP": "NOOP [<string>]",
    "QUIT": "QUIT",
    "RCPT": "RCPT TO:<address>",
    "RSET": "RSET",
    "STARTTLS": "STARTTLS",
    "VRFY": "VRFY <address>",
}


@dataclass(slots=True)
class Transaction:
    """One mail transaction: MAIL's reverse path ("" for the null path <>; None before MAIL)
    and the recipients accepted so far."""

    mail_from: str | None = None
    mail_options: list[str] = field(default_factory=list)
    rcpt_tos: list[str] = field(default_factory=list)
    smtputf8: bool = False


@dataclass(slots=True)
class Greeting:
    """What the client said of itself: HELO/EHLO (None before either) and TLS."""

    helo: str | None = None
    extended: bool = False
    tls: bool = False
    mail_limit: int = COMMAND_LIMIT  # grows with every EHLO (see MAIL_EXTRA_SIZE)


def progress(greeting: Greeting, transaction: Transaction) -> Progress:
    return Progress(
        greeted=greeting.helo is not None,
        tls=greeting.tls,
        envelope=transaction,
        sender=bool(transaction.mail_from is not None),
        recipients=len(transaction.rcpt_tos),
    )


def command_limit(verb: str, greeting: Greeting) -> int:
    if greeting.extended and verb == "MAIL":
        return greeting.mail_limit
    return COMMAND_LIMIT


def parse_command(line: bytes) -> tuple[str, str | None] | None:
    """`VERB[ SP argument]` from one line (its line ending removed); None if it has no verb
    or the verb is not ASCII. The argument is UTF-8 (RFC 6531), undecodable bytes kept as
    surrogates; None when there is none, "" when it is only blanks."""
    text = line.rstrip(b"\r\n")
    if not text:
        return None
    verb, _, arg = text.partition(b" ")
    try:
        name = verb.upper().decode("ascii")
    except UnicodeDecodeError:
        return None
    if not arg:
        return name, None
    return name, arg.strip().decode("utf-8", "surrogateescape")


def line_length(line: bytes) -> int:
    """The length the command limit applies to: the line without its ending."""
    return len(line.rstrip(b"\r\n"))


def wire(reply: SmtpReply) -> bytes:
    """A catalogue reply as sent (catalogue texts are ASCII and carry their status)."""
    return f"{reply}\r\n".encode("ascii")


def echoed(text: str, *, status: bool = True) -> bytes:
    """A reply line that may carry a client's text: made printable ASCII, given an RFC 3463
    status unless `status` is False (greeting, HELO and EHLO lines), cut to 512 octets."""
    line = sanitized(text)
    if status:
        line = with_status(line)
    return (bounded(line) + "\r\n").encode("ascii")


# Constant replies, encoded once.
OK = echoed("250 OK")
BYE = echoed("221 Bye")
BAD_SYNTAX = echoed("500 Error: bad syntax")
LINE_TOO_LONG = echoed("500 Command line too long")
SEND_HELO = echoed("503 Error: send HELO first")
NEED_MAIL = echoed("503 Error: need MAIL command")
NEED_RCPT = echoed("503 Error: need RCPT command")
NESTED_MAIL = echoed("503 Error: nested MAIL command")
DATA_SYNTAX = echoed("501 Syntax: DATA")
START_DATA = echoed("354 End data with <CR><LF>.<CR><LF>")
VRFY_SYNTAX = echoed("501 Syntax: VRFY <address>")
HELP_TOPICS = {verb: echoed(f"214 2.0.0 Syntax: {syntax}") for verb, syntax in HELP_SYNTAX.items()}
# STARTTLS is listed only where it is offered (a certificate is configured).
HELP_LIST = echoed("214 2.0.0 Commands: " + " ".join(v for v in HELP_SYNTAX if v != "STARTTLS"))
HELP_LIST_TLS = echoed("214 2.0.0 Commands: " + " ".join(HELP_SYNTAX))
CANNOT_VRFY = echoed("252 Cannot VRFY user, but will accept message and attempt delivery")
NO_EXPN = echoed("502 EXPN not implemented")
SIZE_TOO_BIG = echoed("552 Error: message size exceeds fixed maximum message size")
BAD_BODY = echoed("501 Error: BODY can only be one of 7BIT, 8BITMIME")
SMTPUTF8_VALUE = echoed("501 Error: SMTPUTF8 takes no arguments")
MAIL_PARAMS_UNKNOWN = echoed("555 MAIL FROM parameters not recognized or not implemented")
RCPT_PARAMS_UNKNOWN = echoed("555 RCPT TO parameters not recognized or not implemented")
