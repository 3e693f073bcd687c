"""Message IDs in the SES shape: 40 characters of [0-9a-z], unique and ordered by time.

Layout: 10 base-36 digits of milliseconds since the epoch (enough until the year 5188),
then 8 digits of a per-process sequence number, then 22 random digits. IDs from one generator
sort in the order they were made; IDs from several processes sort by millisecond.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
LENGTH = 40
_TIME_DIGITS = 10
_SEQ_DIGITS = 8
_RANDOM_DIGITS = LENGTH - _TIME_DIGITS - _SEQ_DIGITS


def _base36(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


class MessageIdGenerator:
    """Thread-safe; `next()` never returns the same ID twice within a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._seq = 0

    def next(self) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            # A clock that steps back must not break ordering: stay on the last millisecond.
            if now_ms <= self._last_ms:
                now_ms = self._last_ms
                self._seq += 1
            else:
                self._last_ms = now_ms
                self._seq = 0
            seq = self._seq
        random_part = _base36(secrets.randbits(113), _RANDOM_DIGITS)
        return _base36(now_ms, _TIME_DIGITS) + _base36(seq, _SEQ_DIGITS) + random_part


_SHAPE = re.compile(rf"[0-9a-z]{{{LENGTH}}}")


def is_message_id(value: str) -> bool:
    return _SHAPE.fullmatch(value) is not None
