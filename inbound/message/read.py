"""A message's facts, reading only as much as the rules need, and its bytes for the actions.

Everything here reads through a `MessageSource` (`inbound.core.ports`): where the bytes are kept
is the source's business, never this module's.

Header conditions need the header block only; attachment conditions need every part's header
block, which the walk of `inbound.message.mime` reads in chunks without keeping any body, so a
40 MB message costs a chunk and a header block of memory however it is built. The bytes an
action sends are read into one buffer, never copied whole a second time.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection
from typing import Literal

from inbound.core.message import MessageFacts, MimeLimits, Reads
from inbound.core.ports import MessageSource
from inbound.message.parse import facts_from
from inbound.message.source import header_end

Need = Literal["nothing", "headers", "everything"]
CHUNK = 1024 * 1024
# A header block longer than this is read with the whole message (the session refuses them).
MAX_HEADER_BYTES = 1024 * 1024


def need_for(reads: Collection[Reads]) -> Need:
    """How much of the message to read for conditions that read `reads` (the condition table's
    facet, via `inbound.rules.evaluate.message_keys`)."""
    if Reads.PARTS in reads:
        return "everything"
    return "headers" if Reads.HEADERS in reads else "nothing"


def read_facts(
    source: MessageSource,
    need: Need,
    limits: MimeLimits | None = None,
    *,
    stop: Callable[[], bool] | None = None,
) -> MessageFacts:
    """The facts of the message in `source`; `stop()` true between two chunks raises
    `WalkCancelled` (a shutdown)."""
    size = source.size
    if need == "nothing":
        return MessageFacts(size=size)
    with source.open() as stream:
        return facts_from(
            stream, size, limits or MimeLimits(), headers_only=need == "headers", stop=stop
        )


def read_with_head(source: MessageSource, head: Callable[[bytes], bytes]) -> bytes:
    """The message in `source` with its header block (up to and with the empty line) replaced by
    `head(block)`, e.g. our trace headers prepended; `head` must treat a header block as it
    would the whole message.

    The body is appended in chunks to the buffer that `BytesIO.getvalue()` then hands over
    without a copy: a 40 MB message costs about 40 MB here, not twice that.
    """
    with source.open() as stream:
        prefix = stream.read(MAX_HEADER_BYTES)
        end = header_end(prefix)
        if end is None:  # no body, or a header block beyond the limit: the simple way
            return head(prefix + stream.read())
        out = io.BytesIO()
        out.write(head(prefix[:end]))
        out.write(memoryview(prefix)[end:])
        del prefix
        while chunk := stream.read(CHUNK):
            out.write(chunk)
    return out.getvalue()
