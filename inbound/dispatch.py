"""The dispatcher: runs the actions of spooled messages, in order, with retries (SPEC section 7).

For each queued message it reads the message (`read_message`) and hands it to the one runner
(`inbound.run.runner.run_message`) with the rule set the message was received with and the
spool's step ledger, so a retry (or a restart) never repeats a succeeded action. Transient
failures wait with exponential backoff up to the maximum age; then, or on a permanent failure,
the message is dead-lettered with the reason. It must not run an action itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from inbound.core.errors import ActionError, PermanentActionError
from inbound.core.message import MessageFacts
from inbound.core.services import Services
from inbound.core.steps import StepKey
from inbound.intake import utc_now
from inbound.message.headers import ReceivedFacts, prepend_headers
from inbound.message.read import need_for, read_facts, read_with_head
from inbound.observe.log import emit, emit_fields
from inbound.observe.metrics import DispatchMetrics
from inbound.observe.supervise import Backoff
from inbound.rules.book import RuleBook
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import Evaluation, Step, message_keys
from inbound.run.context import RunSubject
from inbound.run.ledgers import SpoolLedger
from inbound.run.runner import run_message
from inbound.spool.retry import is_expired, next_delay, window_start
from inbound.spool.store import DispatchState, Spool, SpoolError, SpoolMeta

log = logging.getLogger("inbound.dispatch")


@dataclass(frozen=True)
class RetryPolicy:
    # SES retries a failing action for up to 4 hours (PublishExpired).
    max_age: timedelta = timedelta(hours=4)
    base_delay: float = 60.0
    max_delay: float = 3600.0


class Dispatcher:
    def __init__(
        self,
        spool: Spool,
        book: RuleBook,
        services: Services,
        *,
        metrics: DispatchMetrics,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        sns_max_bytes: int = 150 * 1024,
        sns_oversize: str = "bounce",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.spool = spool
        self.book = book
        self.services = services
        self.metrics = metrics
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.sns_max_bytes = sns_max_bytes
        self.sns_oversize = sns_oversize
        self.clock = clock
        # When each known message is due; `_heap` orders them (stale entries are skipped).
        self._due: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._dead = 0

    def notify(self, message_id: str) -> None:
        """A message was queued: run it now."""
        self._schedule(message_id, self.clock())
        self._wake.set()

    def _schedule(self, message_id: str, due: datetime) -> None:
        self._due[message_id] = due
        heapq.heappush(self._heap, (due, message_id))

    def load_queue(self) -> int:
        """Schedule every queued message (at start-up: resume what was unfinished)."""
        for message_id in self.spool.queued():
            state = self.spool.state(message_id)
            self._schedule(message_id, state.next_attempt_at or self.clock())
        self._dead = len(self.spool.dead())
        self._update_depth()
        return len(self._due)

    async def rescan(self) -> None:
        """Pick up what changed behind our back: messages queued or made due again by
        `inbound spool retry` from a shell."""
        now = self.clock()
        waiting = {m for m, due in self._due.items() if due > now}
        found = await asyncio.to_thread(self._read_schedule, set(self._due), waiting)
        for message_id, due in found.items():
            if message_id in self._running:
                continue
            if message_id not in self._due or due < self._due[message_id]:
                self._schedule(message_id, due)
        self._dead = await asyncio.to_thread(lambda: len(self.spool.dead()))

    def _read_schedule(self, known: set[str], waiting: set[str]) -> dict[str, datetime]:
        """When each new or waiting queued message is due, as its state on disk says."""
        found: dict[str, datetime] = {}
        for message_id in self.spool.queued():
            if message_id in known and message_id not in waiting:
                continue
            with contextlib.suppress(SpoolError):  # finished meanwhile
                found[message_id] = self.spool.state(message_id).next_attempt_at or self.clock()
        return found

    async def run(self, stop: asyncio.Event, *, rescan_every: float = 5.0) -> None:
        """Dispatch until `stop` is set, then let the messages in flight finish.

        A rescan that fails (no descriptor left, queue/ unreadable) is logged and tried again
        later, backed off; meanwhile the messages already known are dispatched."""
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + rescan_every
        rescans = Backoff("dispatcher.rescan", first=rescan_every, cap=max(rescan_every, 60.0))
        while not stop.is_set():
            if loop.time() >= next_scan:
                try:
                    await self.rescan()
                except Exception as exc:  # the next rescan finds what this one missed
                    next_scan = loop.time() + rescans.failed(exc)
                else:
                    rescans.succeeded()
                    next_scan = loop.time() + rescan_every
            self._start_due()
            self._wake.clear()
            await self._sleep(stop)
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

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
            if message_id in self._running:
                continue
            task = asyncio.create_task(self._process_guarded(message_id))
            self._running[message_id] = task
            task.add_done_callback(self._done_callback(message_id))

    async def _sleep(self, stop: asyncio.Event) -> None:
        timeout = 1.0
        if self._heap and len(self._running) < self.concurrency:
            timeout = max(0.0, min(timeout, (self._heap[0][0] - self.clock()).total_seconds()))
        waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()

    def _done_callback(self, message_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._running.pop(message_id, None)
            self._wake.set()

        return done

    async def _process_guarded(self, message_id: str) -> None:
        try:
            await self.process(message_id)
        except SpoolError as exc:
            self._due.pop(message_id, None)
            emit(
                log,
                "message.unreadable",
                level=logging.ERROR,
                message_id=message_id,
                error=str(exc),
            )
        except Exception as exc:  # a bug must not stop the dispatcher; retry later
            self._schedule(message_id, self.clock() + timedelta(seconds=self.retry.base_delay))
            log.exception(
                "dispatch.failed",
                extra={
                    "event": "dispatch.failed",
                    "fields": {"message_id": message_id, "error": type(exc).__name__},
                },
            )

    async def process(self, message_id: str) -> None:
        """Run what is left of one message; schedule, finish or dead-letter it."""
        self._due.pop(message_id, None)
        meta = await asyncio.to_thread(self.spool.meta, message_id)
        state = await asyncio.to_thread(self.spool.state, message_id)
        rules = self.book.snapshot(meta.rules_digest).compiled
        facts, base = await asyncio.to_thread(read_message, self.spool, meta, rules)
        walk = Evaluation(
            rules,
            message_id=message_id,
            connection=meta.connection,
            envelope=meta.envelope,
            message=facts,
            verdicts=meta.verdicts,
        )
        subject = RunSubject(
            message_id=message_id,
            mail_from=meta.envelope.mail_from,
            base=base,
            received_at=meta.received_at,
            processing_ms=lambda: int((self.clock() - meta.received_at).total_seconds() * 1000),
            hostname=meta.hostname,
            sns_max_bytes=self.sns_max_bytes,
            sns_oversize=self.sns_oversize,
        )
        ledger = SpoolLedger(self.spool, message_id, state)
        result = await run_message(
            walk, subject, self.services, ledger, _ActionLog(message_id, self.metrics)
        )
        if result.plan.refused is not None:
            # Spooled before its facts were kept, and beyond the MIME limits for a rule
            # with an attachment condition: never run as if every part had been seen.
            await self._failed(meta, state, PermanentActionError(result.plan.refused))
            return
        if result.failed is not None:
            await self._failed(meta, state, result.failed)
            return
        await asyncio.to_thread(self.spool.finish, message_id)
        age = (self.clock() - meta.received_at).total_seconds()
        self.metrics.dispatch_latency.observe(max(age, 0.0))
        emit(log, "message.dispatched", message_id=message_id, attempts=state.attempts + 1)
        self._update_depth()

    async def _failed(self, meta: SpoolMeta, state: DispatchState, error: ActionError) -> None:
        now = self.clock()
        state.attempts += 1
        state.last_error = str(error)
        # A message an operator retried gets a new window (`inbound spool retry`).
        start = window_start(meta.received_at, state)
        if not error.transient or is_expired(start, now, self.retry.max_age):
            why = "permanent failure" if not error.transient else "retries expired"
            reason = f"{why}: {error}"
            await asyncio.to_thread(self.spool.save_state, meta.message_id, state)
            await asyncio.to_thread(self.spool.dead_letter, meta.message_id, reason)
            self._dead += 1
            emit(
                log,
                "message.dead_lettered",
                level=logging.WARNING,
                message_id=meta.message_id,
                reason=reason,
            )
        else:
            delay = next_delay(state.attempts, base=self.retry.base_delay, cap=self.retry.max_delay)
            state.next_attempt_at = now + timedelta(seconds=delay)
            await asyncio.to_thread(self.spool.save_state, meta.message_id, state)
            self._schedule(meta.message_id, state.next_attempt_at)
            emit(
                log,
                "message.deferred",
                message_id=meta.message_id,
                attempt=state.attempts,
                retry_in=delay,
            )
        self._update_depth()

    def _update_depth(self) -> None:
        queued = len(set(self._due) | set(self._running))
        self.metrics.spool_depth.labels(state="queued").set(queued)
        self.metrics.spool_depth.labels(state="dead").set(self._dead)


class _ActionLog:
    """`action.succeeded` / `action.failed` log lines and the actions metric."""

    def __init__(self, message_id: str, metrics: DispatchMetrics) -> None:
        self.message_id = message_id
        self.metrics = metrics

    def ran(self, step: Step, key: StepKey, attempt: int, error: ActionError | None) -> None:
        kind = step.action.receipt_type
        fields: dict[str, object] = {
            "message_id": self.message_id,
            "rule": step.rule.name,
            "action": kind,
            "attempt": attempt,
        }
        if error is None:
            self.metrics.actions.labels(type=kind, outcome="succeeded").inc()
            emit_fields(log, "action.succeeded", fields)
            return
        self.metrics.actions.labels(type=kind, outcome="failed").inc()
        failure = {**fields, "transient": error.transient, "error": str(error)}
        emit_fields(log, "action.failed", failure, level=logging.WARNING)


def read_message(
    spool: Spool, meta: SpoolMeta, rules: CompiledRuleSet
) -> tuple[MessageFacts, bytes]:
    """The facts of a spooled message and its bytes with the prepended headers (SPEC section
    3): the one place the dispatcher reads a message."""
    path = spool.message_path(meta.message_id) / "message.eml"
    if meta.facts is not None:
        facts = meta.facts  # read once, at receipt
    else:  # none needed, or spooled before facts were kept
        facts = read_facts(path, need_for(message_keys(rules, meta.envelope.rcpt_tos)))
    received = ReceivedFacts(
        message_id=meta.message_id,
        hostname=meta.hostname,
        mail_from=meta.envelope.mail_from,
        rcpt_tos=meta.envelope.rcpt_tos,
        helo=meta.connection.helo,
        client_ip=meta.connection.client_ip,
        rdns=None,
        tls=meta.connection.tls,
        received_at=meta.received_at,
        verdicts=meta.verdicts,
        auth=meta.auth,
    )
    return facts, read_with_head(path, lambda block: prepend_headers(block, received))
