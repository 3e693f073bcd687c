"""Long-running tasks that survive their own exceptions (SPEC section 7, resources).

A loop that stops on an exception stops for good: the dispatcher did, on an `OSError` of its
rescan when the descriptors ran out, and acknowledged mail then waited for a restart. Every
long-running task (an asyncio task or a thread) runs under `supervise` or `supervise_thread`:
an exception is logged as one JSON line (`task.failed`), the task waits (exponential backoff)
and runs again. A step inside a loop that must not end the loop (the dispatcher's rescan)
uses a `Backoff` of its own, which logs the same line. Cancellation, SystemExit and
KeyboardInterrupt are not failures: they end the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from inbound.observe.log import emit, where

log = logging.getLogger("inbound.supervise")


class Backoff:
    """The failures in a row of one task: each is logged, and the wait grows from `first`,
    doubling, up to `cap`. A success ends the run of failures (and says so)."""

    def __init__(self, task: str, *, first: float = 0.5, cap: float = 30.0) -> None:
        self.task = task
        self.first = first
        self.cap = cap
        self.failures = 0

    def failed(self, error: BaseException) -> float:
        """Log the failure (its type only: exception text can carry addresses); the delay to
        wait before trying again."""
        self.failures += 1
        delay = min(self.cap, self.first * 2.0 ** min(self.failures - 1, 32))
        emit(
            log,
            "task.failed",
            level=logging.ERROR,
            task=self.task,
            error_type=type(error).__name__,
            errno=getattr(error, "errno", None),
            where=where(error.__traceback__),
            failures=self.failures,
            retry_in=round(delay, 3),
        )
        return delay

    def succeeded(self) -> None:
        if self.failures:
            emit(log, "task.recovered", task=self.task, failures=self.failures)
            self.failures = 0


async def supervise(
    task: str,
    body: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    backoff: Backoff | None = None,
) -> None:
    """Run `body()` until it returns or `stop` is set; after an exception, log it, wait (or
    until `stop`), and run `body()` again. A body that ran for a while before failing starts
    its backoff again: only failures in a row wait longer."""
    backoff = backoff or Backoff(task)
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await body()
        except Exception as exc:  # the task's own failure: logged, backed off, run again
            if loop.time() - started > backoff.cap:
                backoff.failures = 0
            delay = backoff.failed(exc)
        else:
            return
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return


def supervise_thread(
    task: str, body: Callable[[], None], *, backoff: Backoff | None = None
) -> None:
    """`supervise` for a thread's target: run `body()` until it returns; after an exception,
    log it, sleep, and run it again."""
    backoff = backoff or Backoff(task)
    while True:
        try:
            body()
        except Exception as exc:  # the thread's own failure: logged, backed off, run again
            time.sleep(backoff.failed(exc))
        else:
            return
