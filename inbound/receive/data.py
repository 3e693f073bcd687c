"""Reading DATA: bytes up to CRLF.CRLF, scanned in chunks, into a `MessageWriter`.

It owns the hostile-input rules of the DATA phase (SPEC section 7): bare CR/LF, line length,
message and header size, and failures of the writer. Whatever goes wrong, the rest of the data
is still read and thrown away up to the end of data, so no DATA byte is ever read as a command
(RFC 5321 §4.2.5: the reply comes after the end of data). It never replies itself.

`DataScanner` is fed what the socket delivers; each chunk is checked with bytes methods (count,
find, replace) over all its complete lines at once. Only a chunk that breaks a rule is walked
line by line, to report the first problem as a line-by-line reader would.
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

# Only CRLF "." CRLF ends DATA (RFC 5321 §4.1.1.4): a "." line after a bare LF (`\n.\r\n`, the
# SMTP smuggling sequence) is data, not the end. The scan starts as if after a CRLF: the one
# that ended the DATA command.
_END = b"\r\n.\r\n"
_CRLF = b"\r\n"


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


class DataScanner:
    """One message's DATA, fed chunk by chunk; `feed` says where the end of data was."""

    def __init__(self, writer: MessageWriter, limits: ReceiverLimits) -> None:
        self.writer = writer
        self.limits = limits
        self.outcome = DataOutcome.COMPLETE
        self.error: Exception | None = None
        self.size = 0
        self.header_size = 0
        self.in_header = True  # until the first empty line (RFC 5322 §2.1)
        # The last bytes already scanned when they were a CRLF (the end sequence may start
        # there), then the incomplete line that follows them.
        self._context = _CRLF
        self._pending = b""
        # Longest line a writer may see, CRLF included, before transparency removes a dot.
        self._line_limit = limits.max_line_length
        # What a line may hold before the scanner stops keeping it: room for a dot and CRLF.
        self._read_limit = max(limits.max_line_length + 1, 1001)

    def result(self) -> DataResult:
        return DataResult(self.outcome, self.size, self.error)

    def feed(self, chunk: bytes) -> int:
        """Scan `chunk`; -1 if the end of data is still to come, else how many of its bytes
        were DATA (what follows them is the client's next command)."""
        context, pending = self._context, self._pending
        data = context + pending + chunk if (context or pending) else chunk
        start = len(context)
        end = data.find(_END)
        if end >= 0:
            if end + 2 > start:
                self._lines(data[start : end + 2])
            self._context = self._pending = b""
            return end + 5 - start - len(pending)
        last = data.rfind(b"\n", start)
        if last >= 0:
            self._lines(data[start : last + 1])
            self._context = _CRLF if last > 0 and data[last - 1] == 13 else b""
            self._pending = data[last + 1 :]
        else:
            self._pending = data[start:]
        if len(self._pending) > self._read_limit:
            # A line longer than any allowed one (a transparent dot aside): refused, and only
            # its last CR is kept, in case the CRLF that ends it starts the end sequence.
            self.refuse(DataOutcome.LINE_TOO_LONG)
            self._pending = b"\r" if self._pending.endswith(b"\r") else b""
            self._context = b""
        return -1

    def refuse(self, outcome: DataOutcome) -> None:
        if self.outcome is DataOutcome.COMPLETE:  # the first problem is the one reported
            self.outcome = outcome

    def _lines(self, block: bytes) -> None:
        """Whole lines (the last one ends in LF) checked at once, then written."""
        if self.outcome is not DataOutcome.COMPLETE:
            return  # read to the end of data, and thrown away
        crlf = block.count(_CRLF)
        # RFC 5321 §2.3.8: lines end in CRLF. A bare LF or CR is how SMTP smuggling splits one
        # transaction into two elsewhere: the whole message is refused.
        if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
            self._line_by_line(block)
            return
        # RFC 5321 §4.5.2 transparency: a leading dot is removed from every line.
        original = block
        if block[:1] == b".":
            block = block[1:]
        if b"\r\n." in block:
            block = block.replace(b"\r\n.", _CRLF)
        limit = self._line_limit - 2
        if len(block) > limit and max(map(len, block.split(_CRLF))) > limit:
            self._line_by_line(original)
            return
        header, in_header = 0, self.in_header
        if in_header:
            if block[:2] == _CRLF:
                in_header = False
            else:
                blank = block.find(b"\r\n\r\n")
                header = len(block) if blank < 0 else blank + 2
                in_header = blank < 0
        if self.header_size + header > self.limits.max_header_size:
            self._line_by_line(original)
            return
        if self.size + len(block) > self.limits.max_message_size:
            self._line_by_line(original)
            return
        self.in_header = in_header
        self.header_size += header
        self.size += len(block)
        self._write(block)

    def _line_by_line(self, block: bytes) -> None:
        """The same checks, one line at a time, to report the first problem in the stream."""
        start = 0
        while start < len(block) and self.outcome is DataOutcome.COMPLETE:
            end = block.find(b"\n", start) + 1 or len(block)
            self._take(block[start:end])
            start = end

    def _take(self, line: bytes) -> None:
        if len(line) > self._read_limit + 1:
            # Longer than a line reader would hold: refused before it is even looked at.
            self.refuse(DataOutcome.LINE_TOO_LONG)
            return
        if not line.endswith(_CRLF) or b"\r" in line[:-2]:
            self.refuse(DataOutcome.BARE_LINE_ENDING)
            return
        if len(line) > self._line_limit + (line[:1] == b"."):  # a transparent dot
            self.refuse(DataOutcome.LINE_TOO_LONG)
            return
        if line[:1] == b".":
            line = line[1:]
        self.size += len(line)
        if self.in_header:
            # The header block is bounded on its own: parsing a huge one costs far more than
            # storing a body of the same size (SPEC section 7, --max-header-size).
            self.in_header = line != _CRLF
            self.header_size += len(line)
            if self.in_header and self.header_size > self.limits.max_header_size:
                self.refuse(DataOutcome.HEADER_TOO_BIG)
                return
        if self.size > self.limits.max_message_size:
            self.refuse(DataOutcome.TOO_BIG)
            return
        self._write(line)

    def _write(self, block: bytes) -> None:
        try:
            self.writer.write(block)
        except Exception as exc:  # any failure: read to the end of data, then 451
            self.refuse(DataOutcome.FAILED)
            self.error = exc


async def receive_data(
    reader: asyncio.StreamReader,
    writer: MessageWriter,
    limits: ReceiverLimits,
    keep_alive: Callable[[], None],
) -> DataResult | None:
    """DATA from a stream (`inbound check`'s file, fed as a client would send it); None if
    the stream ends before CRLF.CRLF."""
    scanner = DataScanner(writer, limits)
    keep_alive()
    while True:
        chunk = await reader.read(64 * 1024)
        if not chunk:
            return None
        if scanner.feed(chunk) >= 0:
            return scanner.result()
        keep_alive()
