"""Reading DATA: the stream up to CRLF.CRLF, line by line, into a `MessageWriter`.

It owns the hostile-input rules of the DATA phase (SPEC section 7): bare CR/LF, line length,
message and header size, and failures of the writer. Whatever goes wrong, the rest of the data
is still read and thrown away up to the end of data, so no DATA byte is ever read as a command
(RFC 5321 §4.2.5: the reply comes after the end of data). It never replies itself.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

from inbound.core import reply as replies
from inbound.core.reply import SmtpReply
from inbound.receive.limits import ReceiverLimits
from inbound.receive.policy import MessageWriter

# The DATA timeout is an inactivity timeout, re-armed after this many bytes.
_TIMEOUT_RESET_BYTES = 64 * 1024


class DataOutcome(enum.Enum):
    COMPLETE = "complete"
    TOO_BIG = "too big"
    HEADER_TOO_BIG = "header too big"
    LINE_TOO_LONG = "line too long"
    BARE_LINE_ENDING = "bare line ending"
    # The writer failed (a full disk, EDQUOT, EIO): RFC 5321 §4.2.5, 451 after the end of data.
    FAILED = "failed"

    @property
    def refusal(self) -> SmtpReply | None:
        """The reply to DATA when the message was not kept; None when it is complete."""
        return _REFUSALS.get(self)


_REFUSALS = {
    DataOutcome.TOO_BIG: replies.MESSAGE_TOO_BIG,
    DataOutcome.HEADER_TOO_BIG: replies.HEADER_TOO_BIG,
    DataOutcome.LINE_TOO_LONG: replies.LINE_TOO_LONG,
    DataOutcome.BARE_LINE_ENDING: replies.BARE_LINE_ENDING,
    DataOutcome.FAILED: replies.INTERNAL_ERROR,
}


@dataclass(frozen=True, slots=True)
class DataResult:
    outcome: DataOutcome
    size: int  # bytes of the message after transparency, as far as they were counted
    error: Exception | None = None  # what the writer raised, for FAILED


async def receive_data(
    reader: asyncio.StreamReader,
    writer: MessageWriter,
    limits: ReceiverLimits,
    keep_alive: Callable[[], None],
) -> DataResult | None:
    """Stream DATA into `writer` up to CRLF.CRLF; None if the client went away first.

    After a problem the rest is still read but no longer written. `keep_alive` re-arms the
    data timeout; it is called at the start and after every 64 KB."""
    message = _Message(writer, limits)
    since_reset = 0
    # Only CRLF "." CRLF ends DATA (RFC 5321 §4.1.1.4): a "." line after a bare LF
    # (`\n.\r\n`, the SMTP smuggling sequence) is data, not the end.
    after_crlf = True
    cr_pending = False  # an over-long line was cut just after its CR
    keep_alive()
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.read(exc.consumed)
            message.refuse(DataOutcome.LINE_TOO_LONG)
            after_crlf, cr_pending = False, chunk.endswith(b"\r")
            continue
        except asyncio.IncompleteReadError:
            return None
        if line == b".\r\n" and after_crlf:
            return DataResult(message.outcome, message.size, message.error)
        after_crlf = line.endswith(b"\r\n") or (cr_pending and line == b"\n")
        cr_pending = False
        since_reset += len(line)
        if since_reset >= _TIMEOUT_RESET_BYTES:
            since_reset = 0
            keep_alive()
        message.take(line)


class _Message:
    """The checks on each DATA line, and the writer while all of them pass."""

    def __init__(self, writer: MessageWriter, limits: ReceiverLimits) -> None:
        self.writer = writer
        self.limits = limits
        self.outcome = DataOutcome.COMPLETE
        self.error: Exception | None = None
        self.size = 0
        self.header_size = 0
        self.in_header = True  # until the first empty line (RFC 5322 §2.1)

    def refuse(self, outcome: DataOutcome) -> None:
        if self.outcome is DataOutcome.COMPLETE:  # the first problem is the one reported
            self.outcome = outcome

    def take(self, line: bytes) -> None:
        if self.outcome is not DataOutcome.COMPLETE:
            return  # read to the end of data, and thrown away
        # RFC 5321 §2.3.8: lines end in CRLF. A bare LF or CR is how SMTP smuggling
        # splits one transaction into two elsewhere: the whole message is refused.
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self.refuse(DataOutcome.BARE_LINE_ENDING)
            return
        if len(line) > self.limits.max_line_length + (line[:1] == b"."):  # a transparent dot
            self.refuse(DataOutcome.LINE_TOO_LONG)
            return
        if line[:1] == b".":
            line = line[1:]  # RFC 5321 §4.5.2 transparency
        self.size += len(line)
        if self.in_header:
            # The header block is bounded on its own: parsing a huge one costs far more than
            # storing a body of the same size (SPEC section 7, --max-header-size).
            self.in_header = line != b"\r\n"
            self.header_size += len(line)
            if self.in_header and self.header_size > self.limits.max_header_size:
                self.refuse(DataOutcome.HEADER_TOO_BIG)
                return
        if self.size > self.limits.max_message_size:
            self.refuse(DataOutcome.TOO_BIG)
            return
        try:
            self.writer.write(line)
        except Exception as exc:  # any failure: read to the end of data, then 451
            self.refuse(DataOutcome.FAILED)
            self.error = exc
