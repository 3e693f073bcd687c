"""Message sources: a message's bytes in a file or in memory (`inbound.core.ports.MessageSource`).

`FileSource` reads a file it is given (an .eml for `inbound evaluate`, `test` and `check`, or
whatever file a spool keeps a message in: the spool chooses, this module does not know spools).
`BytesSource` is a message in memory (unit tests, messages fetched whole from S3). Both find the
header block the same way, in `read_head`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from inbound.core.ports import MAX_HEAD_BYTES


def header_end(data: bytes) -> int | None:
    """Offset just past the empty line ending the header block (CRLF or bare LF), or None."""
    positions = [p for p in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if p >= 0]
    if not positions:
        return None
    first = min(positions)
    return first + (4 if data.startswith(b"\r\n\r\n", first) else 2)


def read_head(stream: BinaryIO, limit: int) -> bytes:
    """The header block read from `stream` (see `MessageSource.head`)."""
    prefix = stream.read(limit)
    end = header_end(prefix)
    return prefix if end is None else prefix[:end]


class FileSource:
    """The message in the file at `path`; `size` is the file's size when asked."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r})"

    @property
    def size(self) -> int:
        return os.stat(self.path).st_size

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    def head(self, limit: int = MAX_HEAD_BYTES) -> bytes:
        with self.open() as stream:
            return read_head(stream, limit)

    def read_all(self) -> bytes:
        return self.path.read_bytes()


class BytesSource:
    """A message held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"BytesSource({len(self.data)} bytes)"

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def head(self, limit: int = MAX_HEAD_BYTES) -> bytes:
        return read_head(io.BytesIO(self.data), limit)

    def read_all(self) -> bytes:
        return self.data
