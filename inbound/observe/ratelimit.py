"""Rate-limited log lines: the same error repeated thousands of times a second is a few lines.

When the descriptors ran out, asyncio logged a traceback for every failed accept and write,
1.2-1.7 MB a second. Lines that can repeat like that (asyncio's and other libraries' own
records, uncaught exceptions in threads) pass through a `RateLimiter` keyed by what they say:
at most `BURST` lines of one key in each `WINDOW` seconds; the rest are counted, and one
`log.suppressed` line with the count is written when the window ends. inbound's own events
(one per message, session or action) are never limited.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

# Ten lines of one kind in ten seconds say what is wrong and how often; more say nothing new.
# At a few hundred bytes a line, a flood costs at most ~300 bytes a second per kind of line.
BURST = 10
WINDOW = 10.0
# Distinct keys remembered at once; beyond that, lines share one key ("other").
MAX_KEYS = 256


@dataclass
class _Window:
    start: float
    lines: int = 1
    suppressed: int = 0


class RateLimiter:
    """At most `burst` lines per key in each window of `window` seconds, the first line of a
    key opening its window. Not thread-safe: its handler holds a lock around it."""

    def __init__(
        self,
        *,
        burst: int = BURST,
        window: float = WINDOW,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        # Windows with suppressed lines that ended when the next line of their key came.
        self._unreported: list[tuple[str, int]] = []

    def admit(self, key: str) -> bool:
        """True if a line with this key may be written now; False counts it as suppressed."""
        now = self.clock()
        current = self._windows.get(key)
        if current is not None and now - current.start < self.window:
            if current.lines < self.burst:
                current.lines += 1
                return True
            current.suppressed += 1
            return False
        if current is None and len(self._windows) >= self.max_keys:
            self._forget_quiet(now)
            if len(self._windows) >= self.max_keys and key != "other":
                return self.admit("other")  # one more window at most: "other"
        if current is not None and current.suppressed:
            return self._reopen(key, now)
        self._windows[key] = _Window(now)
        return True

    def _reopen(self, key: str, now: float) -> bool:
        # A window with suppressed lines ended unreported: the next `ended()` reports it; this
        # line starts a new window.
        old = self._windows.pop(key)
        self._unreported.append((key, old.suppressed))
        self._windows[key] = _Window(now)
        return True

    def _forget_quiet(self, now: float) -> None:
        for key, w in list(self._windows.items()):
            if now - w.start >= self.window and not w.suppressed:
                del self._windows[key]

    def ended(self, *, everything: bool = False) -> list[tuple[str, int]]:
        """(key, suppressed) of each window that has ended with lines suppressed (every window
        with suppressed lines if `everything`: at exit); each is reported once."""
        now = self.clock()
        done = list(self._unreported)
        self._unreported.clear()
        for key, w in list(self._windows.items()):
            if w.suppressed and (everything or now - w.start >= self.window):
                done.append((key, w.suppressed))
                del self._windows[key]
        return done

    def next_end(self) -> float | None:
        """When the next window with suppressed lines ends (clock time), or None."""
        if self._unreported:
            return self.clock()
        ends = [w.start + self.window for w in self._windows.values() if w.suppressed]
        return min(ends) if ends else None


def rate_key(record: logging.LogRecord) -> str | None:
    """The key a record is limited by, or None for inbound's own events (never limited)."""
    limited = getattr(record, "rate_key", None)
    if isinstance(limited, str):
        return f"{record.name}:{limited}"
    if record.name == "inbound" or record.name.startswith("inbound."):
        return None
    # The unformatted message: "socket.send() raised exception." whatever the socket.
    return f"{record.name}:{str(record.msg)[:120]}"


class RateLimitedHandler(logging.StreamHandler[TextIO]):
    """A stream handler that drops what its limiter does not admit, and writes one
    `log.suppressed` line per window that dropped lines, when the window ends (a thread wakes
    for it) or at exit."""

    def __init__(self, stream: TextIO, limiter: RateLimiter | None = None) -> None:
        super().__init__(stream)
        self.limiter = limiter or RateLimiter()
        self._limit_lock = threading.Lock()
        self._reporter: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        key = rate_key(record)
        if key is not None:
            with self._limit_lock:
                admitted = self.limiter.admit(key)
                ended = self.limiter.ended()
                if not admitted:
                    self._arm_reporter()
            self._report(ended)
            if not admitted:
                return
        super().emit(record)

    def _arm_reporter(self) -> None:
        if self._reporter is None:
            self._reporter = threading.Thread(
                target=self._report_when_due, name="log-suppressed", daemon=True
            )
            try:
                self._reporter.start()
            except RuntimeError:  # no thread to be had: the next line or exit reports
                self._reporter = None

    def _report_when_due(self) -> None:
        while True:
            with self._limit_lock:
                due = self.limiter.next_end()
                if due is None:
                    self._reporter = None
                    return
            time.sleep(max(0.0, due - self.limiter.clock()) + 0.01)
            with self._limit_lock:
                ended = self.limiter.ended()
            self._report(ended)

    def _report(self, ended: list[tuple[str, int]]) -> None:
        for key, count in ended:
            record = logging.LogRecord(
                "inbound.observe", logging.WARNING, __file__, 0, "log.suppressed", None, None
            )
            record.event = "log.suppressed"
            record.fields = {"key": key, "suppressed": count, "window_s": self.limiter.window}
            super().emit(record)

    def close(self) -> None:
        with self._limit_lock:
            ended = self.limiter.ended(everything=True)
        self._report(ended)
        super().close()
