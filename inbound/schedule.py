"""The scheduler: when each queued message is attempted, and what an attempt's outcome does.

It owns the queue's timing (SPEC section 7, at least once): which messages are due, how many
run at once, and whether a message that failed is deferred on `RetryPolicy`'s schedule
(--retry-delay, doubling to --max-retry-delay, the last attempt at --max-retry-age) or
dead-lettered. Due times come from the spool's due index, never from reading state files. The
clock and the sleep are given to it, so tests run it on a fake clock. It must not run actions
or read messages: one attempt is the `RunMessage` it is given (the dispatcher).

Finished messages leave the queue in batches (`inbound.batch`): whatever finished while the
previous batch was being removed goes in one thread hop and one fsync of queue/.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from inbound.batch import Batcher
from inbound.core.errors import ActionError
from inbound.observe.log import emit
from inbound.observe.metrics import DispatchMetrics
from inbound.observe.supervise import Backoff
from inbound.spool.retry import RetryPolicy
from inbound.spool.store import DispatchState, Spool, SpoolError, SpoolMeta

log = logging.getLogger("inbound.dispatch")


@dataclass(frozen=True)
class Delivered:
    """Every action of the message ran: it leaves the queue."""

    meta: SpoolMeta
    state: DispatchState


@dataclass(frozen=True)
class Failed:
    """An action failed; `state` holds what succeeded so far (it is saved with the decision)."""

    meta: SpoolMeta
    state: DispatchState
    error: ActionError


Outcome = Delivered | Failed
# One attempt at one queued message; raises SpoolError when it cannot read the message.
RunMessage = Callable[[str], Awaitable[Outcome]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Runs due messages through `run`, at most `concurrency` at once, until stopped."""

    def __init__(
        self,
        spool: Spool,
        run: RunMessage,
        *,
        metrics: DispatchMetrics,
        policy: RetryPolicy | None = None,
        concurrency: int = 8,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        tick: float = 1.0,
        rescan_every: float = 5.0,
    ) -> None:
        self.spool = spool
        self._run = run
        self.metrics = metrics
        self.policy = policy or RetryPolicy()
        self.concurrency = concurrency
        self.clock = clock
        self._sleep = sleep
        # The longest wait without looking at the clock: due times are wall-clock times, and
        # the wall clock may jump while we sleep.
        self.tick = tick
        self.rescan_every = rescan_every
        # Every queued message we know of -> its due index entry as we last saw or wrote it
        # (None: none, due now). A rescan compares the index with this to see what changed.
        self._indexed: dict[str, datetime | None] = {}
        # Messages waiting for their turn, and when; `_heap` orders them (stale entries are
        # skipped). A message is in `_due` or `_running`, never both.
        self._due: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        # Due again while its attempt was still running: run after it, never dropped.
        self._held: dict[str, datetime] = {}
        # Messages changed while a rescan lists the spool: its listing may predate the change.
        self._changed: set[str] | None = None
        self._wake = asyncio.Event()
        self._dead = 0
        self._finishes: Batcher[str, None] = Batcher("dispatch-finish", self._finish_many)

    @property
    def in_flight(self) -> int:
        """Attempts running now."""
        return len(self._running)

    def notify(self, message_id: str) -> None:
        """A message was queued: run it now (after its attempt in flight, if one is)."""
        self._indexed.setdefault(message_id, None)
        self._touch(message_id)
        self._request(message_id, self.clock())
        # Counted from its 250 on, not from the next rescan (up to 5 s later, or never for a
        # message delivered before it): `_attempt` counts it out once it leaves the queue.
        self._update_depth()
        self._wake.set()

    def load_queue(self) -> int:
        """Schedule every queued message (at start-up: resume what was unfinished, each when
        the due index says). Reads two folder listings, no state file."""
        queued = set(self.spool.queued())
        due = self.spool.due()
        for message_id in due.keys() - queued:  # left by a crash: the message went on
            self.spool.forget_due(message_id)
        now = self.clock()
        for message_id in sorted(queued):
            self._indexed[message_id] = due.get(message_id)
            self._request(message_id, due.get(message_id) or now)
        self._dead = len(self.spool.dead())
        self._update_depth()
        return len(self._indexed)

    async def rescan(self) -> None:
        """Pick up what changed behind our back: messages queued by another process, made due
        now by `inbound spool retry` from a shell, or removed."""
        self._changed = set()
        try:
            queued, due, dead = await asyncio.to_thread(self._list)
        finally:
            changed, self._changed = self._changed, None
        now = self.clock()
        for message_id in queued:
            entry = due.get(message_id)
            if message_id in changed:
                continue  # what we know is newer than the listing
            if message_id in self._indexed and self._indexed[message_id] == entry:
                continue  # known, and unchanged
            self._indexed[message_id] = entry
            self._request(message_id, entry or now)
        for message_id in self._indexed.keys() - queued - changed - self._running.keys():
            self._forget(message_id)  # removed from queue/ by hand
        self._dead = dead
        self._update_depth()

    def _list(self) -> tuple[set[str], dict[str, datetime], int]:
        return set(self.spool.queued()), self.spool.due(), len(self.spool.dead())

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set, then let the attempts in flight finish.

        A rescan that fails (no descriptor left, queue/ unreadable) is logged and tried again
        later, backed off; meanwhile the messages already known are dispatched."""
        every = self.rescan_every
        rescans = Backoff("dispatcher.rescan", first=every, cap=max(every, 60.0))
        last_scan = self.clock()
        next_scan = last_scan + timedelta(seconds=every)
        while not stop.is_set():
            now = self.clock()
            if not last_scan <= now < next_scan:  # due, or the clock went back
                last_scan = now
                try:
                    await self.rescan()
                except Exception as exc:  # the next rescan finds what this one missed
                    next_scan = self.clock() + timedelta(seconds=rescans.failed(exc))
                else:
                    rescans.succeeded()
                    next_scan = self.clock() + timedelta(seconds=every)
            self._start_due()
            self._wake.clear()
            await self._wait(stop, self._timeout(next_scan))
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _timeout(self, next_scan: datetime) -> float:
        now = self.clock()
        until = min(now + timedelta(seconds=self.tick), next_scan)
        if self._heap and len(self._running) < self.concurrency:
            until = min(until, self._heap[0][0])
        return max(0.0, (until - now).total_seconds())

    async def _wait(self, stop: asyncio.Event, timeout: float) -> None:
        waiters = [
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(stop.wait()),
            asyncio.ensure_future(self._sleep(timeout)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _request(self, message_id: str, due: datetime) -> None:
        """Run `message_id` at `due`, or earlier if it is waiting for an earlier time already."""
        if message_id in self._running:
            held = self._held.get(message_id)
            self._held[message_id] = due if held is None else min(held, due)
        elif message_id not in self._due or due < self._due[message_id]:
            self._due[message_id] = due
            heapq.heappush(self._heap, (due, message_id))

    def _start_due(self) -> None:
        now = self.clock()
        while self._heap and len(self._running) < self.concurrency:
            due, message_id = self._heap[0]
            if self._due.get(message_id) != due:
                heapq.heappop(self._heap)  # stale: rescheduled, or done
                continue
            if due > now:
                break
            heapq.heappop(self._heap)
            del self._due[message_id]
            self._running[message_id] = asyncio.create_task(self._attempt(message_id))

    async def _attempt(self, message_id: str) -> None:
        """One attempt and its outcome; then, in the same step (no await in between), the
        message leaves `_running` and its next attempt is scheduled, with any held behind it."""
        next_due: datetime | None = None
        try:
            outcome = await self._run(message_id)
            next_due = await self._settle(message_id, outcome)
        except SpoolError as exc:
            # Unreadable, or its outcome could not be saved: forgotten until a rescan finds it
            # again, as it finds any message it does not know.
            self._forget(message_id)
            emit(
                log,
                "message.unreadable",
                level=logging.ERROR,
                message_id=message_id,
                error=str(exc),
            )
        except Exception as exc:  # a bug must not stop the dispatcher; retry later
            next_due = self.clock() + timedelta(seconds=self.policy.base_delay)
            log.exception(
                "dispatch.failed",
                extra={
                    "event": "dispatch.failed",
                    "fields": {"message_id": message_id, "error": type(exc).__name__},
                },
            )
        finally:
            del self._running[message_id]
            held = self._held.pop(message_id, None)
            if message_id in self._indexed:  # still queued
                for due in (next_due, held):
                    if due is not None:
                        self._request(message_id, due)
            self._update_depth()
            self._wake.set()

    async def _settle(self, message_id: str, outcome: Outcome) -> datetime | None:
        """Finish, defer or dead-letter the message; when it is due next, if it is."""
        meta, state = outcome.meta, outcome.state
        if isinstance(outcome, Delivered):
            await self._finishes.submit(message_id)
            self._forget(message_id)
            age = (self.clock() - meta.received_at).total_seconds()
            self.metrics.dispatch_latency.observe(max(age, 0.0))
            emit(log, "message.dispatched", message_id=message_id, attempts=state.attempts + 1)
            return None
        error, now = outcome.error, self.clock()
        state.attempts += 1
        state.last_error = str(error)
        when = None
        if error.transient:
            when = self.policy.next_attempt(meta, state, now, error.retry_after)
        if when is None:
            why = "permanent failure" if not error.transient else "retries expired"
            reason = f"{why}: {error}"
            await asyncio.to_thread(self.spool.save_state, message_id, state)
            await asyncio.to_thread(self.spool.dead_letter, message_id, reason)
            self._forget(message_id)
            self._dead += 1
            emit(
                log,
                "message.dead_lettered",
                level=logging.WARNING,
                message_id=message_id,
                reason=reason,
            )
            return None
        state.next_attempt_at = when
        await asyncio.to_thread(self.spool.defer, message_id, state)
        self._indexed[message_id] = when
        self._touch(message_id)
        retry_in = (when - now).total_seconds()
        emit(
            log,
            "message.deferred",
            message_id=message_id,
            attempt=state.attempts,
            retry_in=retry_in,
        )
        return when

    def _finish_many(self, message_ids: Sequence[str]) -> list[Exception | None]:
        return list(self.spool.finish_many(message_ids))

    def _touch(self, message_id: str) -> None:
        if self._changed is not None:
            self._changed.add(message_id)

    def _forget(self, message_id: str) -> None:
        self._indexed.pop(message_id, None)
        self._due.pop(message_id, None)  # its heap entry is skipped as stale
        self._touch(message_id)

    def _update_depth(self) -> None:
        self.metrics.spool_depth.labels(state="queued").set(len(self._indexed))
        self.metrics.spool_depth.labels(state="dead").set(self._dead)
