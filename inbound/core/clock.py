"""The clock every stage is given: timezone-aware UTC now, injectable for tests. No I/O."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now, in UTC, timezone-aware (the spool's records and the retry schedule need both)."""
    return datetime.now(UTC)
