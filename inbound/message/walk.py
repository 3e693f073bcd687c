"""Lines of a message read in chunks, with the feed parser's stack of false ends of input.

This module owns reading a message as lines (CRLF, LF or a bare CR ends one, as in the stdlib
feed parser) without ever holding more than a chunk and one line, and skipping bodies at the
speed of a regular expression search: a body line matters only if it could end the part, that
is if it starts with "--" and a boundary in force (RFC 2046 §5.1.1). Lines longer than
`MAX_LINE` are cut there; such a line is never a boundary.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

CHUNK = 64 * 1024
# As long as a header block may be (`inbound.message.mime`): a Subject is never cut short.
MAX_LINE = 1024 * 1024
_EOL = re.compile(rb"\r\n?|\n")


class WalkCancelled(Exception):  # noqa: N818 - a stop asked for, not an error
    """The caller's `stop` answered true between two chunks."""


class LineReader:
    """`peek()` the line at hand, `advance()` past it; both see a false end of input (None)
    where a line matches one of the `ending_at` patterns in force, as inner parts end at any
    enclosing boundary."""

    def __init__(self, stream: BinaryIO, stop: Callable[[], bool] | None = None) -> None:
        self.stream = stream
        self.stop = stop
        self.buf = b""
        self.pos = 0
        # Bytes of the stream dropped from the front of `buf`: `offset` is where `pos` is.
        self.dropped = 0
        self.eof = False
        # False when `pos` may be inside a line (a long one, or a skip that stopped mid-way).
        self.at_line_start = True
        # (pattern, "--boundary" or None) of each ending in force, innermost last.
        self.endings: list[tuple[re.Pattern[bytes], bytes | None]] = []
        self._search: re.Pattern[bytes] | None = None
        self._peeked: tuple[bytes | None, int | None] | None = None

    @property
    def offset(self) -> int:
        """Where the reader is in the stream (the line at hand starts here, if peeked)."""
        return self.dropped + self.pos

    def at_delimiter(self) -> bool:
        """True at a multipart's delimiter line in force, or at the end of the input inside a
        multipart: either way the line break before it is the delimiter's (RFC 2046 §5.1.1)."""
        if self._peeked is None:
            self._peeked = self._next_line()
        line = self._peeked[0]
        return any(
            separator is not None and (line is None or pattern.match(line))
            for pattern, separator in self.endings
        )

    @contextlib.contextmanager
    def ending_at(self, pattern: re.Pattern[bytes], separator: bytes | None) -> Iterator[None]:
        """Within the block, a line `pattern` matches is a false end of input. `separator` is
        the "--boundary" every such line starts with, or None (then bodies are read line by
        line)."""
        self.endings.append((pattern, separator))
        self._search = None
        try:
            yield
        finally:
            self.endings.pop()
            self._search = None

    def peek(self) -> bytes | None:
        """The line at hand with its line break (cut at MAX_LINE); None at an end of input."""
        if self._peeked is None:
            self._peeked = self._next_line()
        line = self._peeked[0]
        if line is None or any(pattern.match(line) for pattern, _ in self.endings):
            return None
        return line

    def advance(self) -> None:
        """Past the line at hand (all of it, however long)."""
        if self._peeked is None:
            self._peeked = self._next_line()
        end = self._peeked[1]
        self._peeked = None
        if end is not None:
            self.pos = end
            return
        while True:  # a long line: drop the rest of it
            found = self._line_end()
            if found is not None:
                self.pos = found
                return
            self.pos = len(self.buf) - (1 if self.buf.endswith(b"\r") else 0)
            if not self._fill():
                self.pos = len(self.buf)
                return

    def take_lines(self, lines: re.Pattern[bytes]) -> bytes:
        """The whole lines at hand that `lines` matches as a run, taken many per search; b""
        when none, or when an ending in force might be among them (then `peek` judges each).
        The line at hand must have been peeked (and found no ending)."""
        found = lines.match(self.buf, self.pos)
        if found is None or found.end() == self.pos:
            return b""
        run = self.buf[self.pos : found.end()]
        search = self._candidates() if self.endings else None
        if self.endings and (search is None or search.search(run)):
            return b""
        self.pos, self._peeked = found.end(), None
        return run

    def skip_lines(self, separator: bytes) -> None:
        """Past the whole delimiter lines of `separator` at hand, many per search, unless an
        ending in force could match one of them (then `peek` must judge each)."""
        if any(s is None or separator.startswith(s) for _, s in self.endings):
            return
        # A bare CR counts only when the next byte is here: it may be a CRLF cut in two.
        run = re.compile(rb"(?:" + re.escape(separator) + rb"[ \t]*(?:\r\n|\n|\r(?=[^\n])))+")
        found = run.match(self.buf, self.pos)
        if found is not None:
            self.pos, self._peeked = found.end(), None

    def skip_body(self) -> None:
        """Past every line up to an end of input (that line stays at hand)."""
        if not self.endings:
            self._peeked = None
            self.pos = len(self.buf)
            while self._fill():
                self.pos = len(self.buf)
            return
        search = self._candidates()
        if search is None:  # an ending that is not a boundary: line by line
            while self.peek() is not None:
                self.advance()
            return
        while True:
            if self.at_line_start and self.peek() is None:
                return
            # The next line start whose line could be a boundary in force.
            found = search.search(self.buf, self.pos)
            if found is not None:
                self.pos, self.at_line_start, self._peeked = found.end(), True, None
                continue
            if self.eof:
                self.pos, self._peeked = len(self.buf), None
                return
            # Keep the last line break: a candidate may straddle two chunks.
            last = max(self.buf.rfind(b"\r", self.pos), self.buf.rfind(b"\n", self.pos))
            self.pos = last if last >= 0 else len(self.buf)
            self.at_line_start, self._peeked = False, None
            self._fill()

    def _candidates(self) -> re.Pattern[bytes] | None:
        if self._search is None:
            separators = [separator for _, separator in self.endings]
            if any(separator is None for separator in separators):
                return None
            choices = b"|".join(re.escape(s) for s in separators if s is not None)
            # Only whole delimiter lines: "--b" + "--"? + blanks, then a line break or the end
            # of the buffer (then `peek` reads on and decides).
            self._search = re.compile(rb"[\r\n](?=(?:" + choices + rb")(?:--)?[ \t]*(?:[\r\n]|\Z))")
        return self._search

    def _next_line(self) -> tuple[bytes | None, int | None]:
        """(line, where it ends in `buf`); (head, None) for a line cut at MAX_LINE."""
        self.at_line_start = True
        while True:
            end = self._line_end()
            if end is not None:
                return self.buf[self.pos : end], end
            if len(self.buf) - self.pos > MAX_LINE:
                return self.buf[self.pos : self.pos + MAX_LINE], None
            if not self._fill():
                if self.pos >= len(self.buf):
                    return None, None
                return self.buf[self.pos :], len(self.buf)

    def _line_end(self) -> int | None:
        found = _EOL.search(self.buf, self.pos)
        if found is None:
            return None
        if found.end() == len(self.buf) and found.group() == b"\r" and not self.eof:
            return None  # perhaps the CR of a CRLF cut by the chunk boundary
        return found.end()

    def _fill(self) -> bool:
        """Read one more chunk; False at the end of the stream."""
        if self.eof:
            return False
        if self.stop is not None and self.stop():
            raise WalkCancelled
        chunk = self.stream.read(CHUNK)
        self.dropped += self.pos
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        self._peeked = None
        if not chunk:
            self.eof = True
            return False
        return True
