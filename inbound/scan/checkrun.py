"""What every step of one message's authentication checks shares: the resolver, one deadline
for them all, and the worker threads the blocking libraries run on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from inbound.scan.dns import Resolver

_T = TypeVar("_T")


class Deadline:
    """A point in time every step of the checks must end by."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())


@dataclass(frozen=True, slots=True)
class CheckRun:
    """What every step of one check shares: the resolver, the deadline, the worker threads."""

    resolver: Resolver
    deadline: Deadline
    executor: Executor | None

    async def in_thread(self, function: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(function, *args))
