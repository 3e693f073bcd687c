"""Facts of a message on disk, reading only as much as the rules need.

Header conditions need the header block only; attachment conditions need the whole message.
Reading less keeps a 40 MB message from being parsed when no rule looks inside it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from inbound.core.message import MessageFacts
from inbound.message.parse import parse_message

Need = Literal["nothing", "headers", "everything"]
# A header block larger than this is cut: no legitimate mail has one (RFC 5322 §2.1.1 lines).
MAX_HEADER_BYTES = 1024 * 1024


def need_for(keys: frozenset[str]) -> Need:
    if "attachment" in keys:
        return "everything"
    return "headers" if keys else "nothing"


def read_facts(path: Path, need: Need) -> MessageFacts:
    size = path.stat().st_size
    if need == "nothing":
        return MessageFacts(size=size)
    if need == "everything":
        return parse_message(path.read_bytes())
    with path.open("rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    end = _header_end(head)
    facts = parse_message(head[:end] if end is not None else head)
    return dataclasses.replace(facts, size=size, attachments=())


def _header_end(data: bytes) -> int | None:
    """Offset just past the empty line ending the header block (CRLF or bare LF)."""
    positions = [p for p in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if p >= 0]
    if not positions:
        return None
    first = min(positions)
    return first + (4 if data.startswith(b"\r\n\r\n", first) else 2)
