"""What the rules may ask of a message: headers, From, Subject, attachments, size.

`MessageFacts` is built once per message by `inbound.message.parse` and never changes; the
raw bytes stay with the spool, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reads(StrEnum):
    """What a condition reads (a facet of the condition table, `inbound.rules.condition_table`).
    `HEADERS` and `PARTS` decide how much of a message is read before the rules run."""

    CONNECTION = "connection"  # the SMTP session: client IP, TLS
    ENVELOPE = "envelope"  # MAIL FROM, RCPT TO
    SIZE = "size"  # the message's size, known without reading it
    HEADERS = "headers"  # the top-level header block
    PARTS = "parts"  # every MIME part's header block (attachments): the whole message
    VERDICTS = "verdicts"  # the scanners' verdicts


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    # Unfolded, as received (non-UTF-8 bytes decoded with surrogateescape, then replaced).
    value: str
    # RFC 2047 encoded words decoded; equal to `value` when there are none or they are broken.
    decoded: str


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str | None
    content_type: str


@dataclass(frozen=True, slots=True)
class MessageFacts:
    size: int
    headers: tuple[Header, ...] = ()
    from_addresses: tuple[str, ...] = ()
    to_addresses: tuple[str, ...] = ()
    cc_addresses: tuple[str, ...] = ()
    subject: str | None = None
    attachments: tuple[Attachment, ...] = ()
    # Names of the parser's defect classes (e.g. "CloseBoundaryNotFoundDefect"), for the trace.
    defects: tuple[str, ...] = field(default=())
    # Set when the MIME walk stopped at a limit (`MimeLimits`), so `attachments` may be missing
    # some: which limit, in words. Rules with an attachment condition then refuse the message.
    mime_limit: str | None = None

    def header_values(self, name: str) -> list[str]:
        """Decoded values of every header called `name` (case-insensitive), in order."""
        wanted = name.lower()
        return [h.decoded for h in self.headers if h.name.lower() == wanted]


EMPTY_MESSAGE = MessageFacts(size=0)


# The deepest walk allowed: it recurses once per level, far below Python's recursion limit.
MAX_MIME_DEPTH = 200


@dataclass(frozen=True, slots=True)
class MimeLimits:
    """How far the attachment walk goes (`--max-mime-parts`, `--max-mime-depth`); a message
    beyond them is refused where a rule needs its attachments (SPEC section 7)."""

    # Parts in document order, the message itself and every multipart included.
    max_parts: int = 1_000
    # Nesting levels below the message: a multipart's parts or a message/rfc822's message.
    max_depth: int = 50
