"""The MIME structure of a message read as a stream: each part's header block, never a body.

This module owns the attachment walk. It reads the message in chunks and holds only the line at
hand and one part's header block, so a 40 MB message costs the memory of its largest header
block, not of its bodies. Parts are found as the stdlib feed parser finds them (RFC 2046 §5.1.1
boundaries, an inner part ends at any enclosing boundary, multipart/digest defaults), and each
header block is read by `email.parser`. It stops at `MimeLimits` and says which limit, and asks
`stop` before each chunk, so a shutdown never waits for a walk.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import BinaryIO

from inbound.core.message import Attachment, MimeLimits
from inbound.message.text import DECODE_ERRORS, decode_words, unfold
from inbound.message.walk import LineReader, WalkCancelled

__all__ = ["MimeWalk", "PartSpan", "WalkCancelled", "attachment_of", "bounded_fields", "walk_mime"]

# A header block larger than this stops the walk: no legitimate mail has one, and the fields
# after it could hide an attachment. The top one is cut there by the session (`--max-header-size`).
MAX_HEADER_BYTES = 1024 * 1024
# The stdlib reads MIME parameters in time quadratic in a field's length and its ";" count, so
# only this much of a Content-Type or Content-Disposition is read for parameters.
MAX_PARAMS_CHARS = 4 * 1024
MAX_PARAMS = 50
_NAME = r"[a-z0-9!#$%&'*+.^_`|~-]+"  # RFC 2045 token characters, lower-cased
_MIME_TYPE = re.compile(rf"{_NAME}/{_NAME}")
# The feed parser's tests, on bytes: a header field or continuation line, and an empty line.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_EMPTY_LINE = re.compile(rb"\r\n|\r|\n")
# A run of such lines, each whole (a bare CR only when the next byte is here: CRLF cut in two).
_HEADER_LINES = re.compile(
    rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*(?:\r\n|\n|\r(?=[^\n])))*"
)
# All header blocks of the parts together: reading them is the walk's real work (the stdlib
# reads a megabyte of fields in about 0.2 s), so a message cannot make it work for long.
MAX_HEADER_TOTAL = 8 * 1024 * 1024


class _Beyond(Exception):  # noqa: N818 - internal: unwinds the walk at a limit
    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


@dataclass
class PartSpan:
    """Where a part's body lies in the stream (`walk_mime(spans=True)`), for readers of bodies:
    a leaf, or a message/* part taken whole (`whole`: its own parts come before it, `nested`)."""

    part: Message
    start: int
    end: int
    whole: bool
    nested: bool
    # A part of a multipart: its last line break belongs to the delimiter line after it, even
    # when a missing close delimiter left it at the end of the message (RFC 2046 §5.1.1).
    at_boundary: bool


@dataclass
class MimeWalk:
    """What the walk saw: the top header block, attachments in document order, defects."""

    root: Message
    attachments: list[Attachment] = field(default_factory=list)
    defects: set[str] = field(default_factory=set)
    # Which limit stopped the walk ("more than 1000 MIME parts"); None: every part was seen.
    limit: str | None = None
    # With `spans=True`: the parts' bodies, and where the bytes no span covers begin when a
    # limit stopped the walk.
    spans: list[PartSpan] = field(default_factory=list)
    unread_from: int | None = None


def walk_mime(
    stream: BinaryIO,
    limits: MimeLimits,
    *,
    headers_only: bool = False,
    stop: Callable[[], bool] | None = None,
    spans: bool = False,
) -> MimeWalk:
    """Walk the message in `stream`; raises `WalkCancelled` when `stop()` is true."""
    walker = _Walker(LineReader(stream, stop), limits, headers_only)
    walker.spans = spans
    try:
        walker.part(0, "text/plain")
    except _Beyond as beyond:
        walker.found.limit = beyond.limit
        if spans:  # from the part the limit stopped at, or the message/* part it is in
            walker.found.unread_from = min([walker.entered, *walker.open_messages])
    return walker.found


class _Walker:
    def __init__(self, reader: LineReader, limits: MimeLimits, headers_only: bool) -> None:
        self.r = reader
        self.limits = limits
        self.headers_only = headers_only
        self.parts = 0
        self.header_total = 0
        self.found = MimeWalk(Message())
        self.spans = False
        self.open_messages: list[int] = []  # where each message/* part being walked starts
        self.entered = 0  # where the last part entered starts (its header block)

    def part(self, depth: int, default_type: str) -> None:
        """One part, from its header block to its end (EOF or an enclosing boundary)."""
        self.entered = self.r.offset
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise _Beyond(f"more than {self.limits.max_parts} MIME parts")
        if depth > self.limits.max_depth:
            raise _Beyond(f"MIME parts nested more than {self.limits.max_depth} levels deep")
        part = self._headers(depth, default_type)
        if depth == 0 and self.headers_only:
            return
        start = self.r.offset
        if part.get_content_maintype() == "message":
            self.open_messages.append(start)
            if part.get_content_type() == "message/delivery-status":
                self._delivery_status(depth)  # RFC 3464: header blocks, each a part of its own
            else:
                self.part(depth + 1, "text/plain")  # message/rfc822 and kin: one whole message
            self.open_messages.pop()
            self._span(part, start, whole=True)
        elif part.get_content_maintype() == "multipart":
            if not self._multipart(part, depth):  # no parts after all: a leaf, as compat32 has it
                if depth == 0:
                    self.found.defects.add("MultipartInvariantViolationDefect")
                self._leaf(part, start)
        else:
            self.r.skip_body()
            self._leaf(part, start)

    def _leaf(self, part: Message, start: int) -> None:
        attachment = attachment_of(part)
        if attachment is not None:
            self.found.attachments.append(attachment)
        self._span(part, start, whole=False)

    def _span(self, part: Message, start: int, *, whole: bool) -> None:
        if self.spans:
            nested, delimited = bool(self.open_messages), self.r.at_delimiter()
            self.found.spans.append(PartSpan(part, start, self.r.offset, whole, nested, delimited))

    def _headers(self, depth: int, default_type: str) -> Message:
        lines: list[bytes] = []
        size = 0
        beyond = None
        while (line := self.r.peek()) is not None:
            if not _HEADER_LINE.match(line):
                if _EMPTY_LINE.match(line):
                    self.r.advance()  # the separator; anything else already belongs to the body
                else:
                    self.found.defects.add("MissingHeaderBodySeparatorDefect")
                break
            self.r.advance()
            run = self.r.take_lines(_HEADER_LINES)  # the rest of the block, many lines a search
            size += len(line) + len(run)
            self.header_total += len(line) + len(run)
            if size > MAX_HEADER_BYTES:
                beyond = _Beyond(f"a MIME header block over {MAX_HEADER_BYTES} bytes")
                break
            if self.header_total > MAX_HEADER_TOTAL:
                beyond = _Beyond(f"MIME header blocks over {MAX_HEADER_TOTAL} bytes in all")
                break
            lines += (line, run)
        part = BytesHeaderParser(policy=compat32).parsebytes(b"".join(lines))
        part.set_default_type(default_type)
        self.found.defects.update(type(defect).__name__ for defect in part.defects)
        if depth == 0:
            self.found.root = part  # the fields before a cut are facts all the same
        if beyond is not None:
            raise beyond
        return part

    def _multipart(self, part: Message, depth: int) -> bool:
        """The parts of a multipart (RFC 2046 §5.1.1); False when it turned out to have none."""
        boundary = part.get_boundary()
        if boundary is None:
            self.found.defects.add("NoBoundaryInMultipartDefect")
            self.r.skip_body()
            return False
        if str(part.get("content-transfer-encoding", "8bit")).lower() not in (
            "7bit",
            "8bit",
            "binary",
        ):  # RFC 2045 §6.4
            self.found.defects.add("InvalidMultipartContentTransferEncodingDefect")
        try:
            separator = b"--" + boundary.encode("ascii", "surrogateescape")
        except UnicodeError:  # RFC 2231-decoded to non-ASCII: no line of bytes can match it
            self.found.defects.add("StartBoundaryNotFoundDefect")
            self.r.skip_body()
            return False
        delimiter = re.compile(re.escape(separator) + rb"(?P<end>--)?[ \t]*(?:\r\n|\r|\n)?$")
        child_type = "message/rfc822" if part.get_content_type() == "multipart/digest" else None
        preamble, closed = True, False
        while (line := self.r.peek()) is not None:
            found = delimiter.match(line)
            if found is None:  # the preamble (or, on hostile input, a stray line): skip it fast
                self.r.advance()
                with self.r.ending_at(delimiter, separator):
                    self.r.skip_body()
                continue
            if found.group("end"):
                closed = True
                self.r.advance()
                break
            preamble = False
            # Repeated delimiter lines delimit no part (the stdlib's reading of RFC 2046's BNF).
            while (line := self.r.peek()) is not None and delimiter.match(line):
                self.r.advance()
                self.r.skip_lines(separator)  # a flood of them costs a search per chunk
            with self.r.ending_at(delimiter, separator):
                self.part(depth + 1, child_type or "text/plain")
        if preamble:  # no part at all (a close delimiter first): the rest is the epilogue
            self.found.defects.add("StartBoundaryNotFoundDefect")
            self.r.skip_body()
            return False
        if not closed:
            self.found.defects.add("CloseBoundaryNotFoundDefect")
            return True
        self.r.skip_body()  # the epilogue
        return True

    def _delivery_status(self, depth: int) -> None:
        while True:
            with self.r.ending_at(_EMPTY_LINE, None):
                self.part(depth + 1, "text/plain")
            if self.r.peek() is not None:
                self.r.advance()  # the empty line between two blocks
            if self.r.peek() is None:
                return


def attachment_of(part: Message) -> Attachment | None:
    """An `Attachment` for a leaf part with a filename or `Content-Disposition: attachment`."""
    fields = bounded_fields(part)
    try:
        filename = decode_words(fields.get_filename() or "") or None
    except DECODE_ERRORS:
        filename = None
    if filename is None and fields.get_content_disposition() != "attachment":
        return None
    content_type = (fields.get("Content-Type") or "").partition(";")[0].strip().lower()
    if not _MIME_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream" if filename else part.get_default_type()
    return Attachment(filename=filename, content_type=content_type)


def bounded_fields(part: Message) -> Message:
    """A part's Content-Type and Content-Disposition, as much of each as parameters are read
    from (`MAX_PARAMS_CHARS`), unfolded UTF-8 so a raw 8-bit filename survives; the stdlib
    undoes RFC 2231 (filename*=utf-8''...) and continuations when they are read."""
    fields = Message()
    for name in ("Content-Type", "Content-Disposition"):
        value = _first(part, name)
        if value is not None:
            fields[name] = ";".join(value[:MAX_PARAMS_CHARS].split(";", MAX_PARAMS)[:MAX_PARAMS])
    return fields


def _first(part: Message, name: str) -> str | None:
    wanted = name.lower()
    for key, value in part.raw_items():
        if key.lower() == wanted:
            return unfold(value)
    return None
