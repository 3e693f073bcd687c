"""The dispatcher: runs the actions of spooled messages, in order, with retries (SPEC section 7).

For each queued message it evaluates the rule set the message was received with, runs the
actions that have not succeeded yet through the target set, and records each outcome before
going on, so a retry (or a restart) never repeats a succeeded action. A request_response
Lambda's disposition is recorded too and steers the next evaluation. Transient failures wait
with exponential backoff up to the maximum age; then, or on a permanent failure, the message
is dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from inbound.actions import ActionModel, AddHeaderAction
from inbound.actions.base import ActionContext, JsonObject
from inbound.core.clock import utc_now
from inbound.core.errors import ActionError, PermanentActionError
from inbound.core.plan import Plan
from inbound.core.ports import SpoolError, SpoolPort
from inbound.core.targets import BounceRequest, Targets
from inbound.message.headers import ReceivedFacts, add_header, prepend_headers
from inbound.message.notification import (
    lambda_event,
    mail_object,
    receipt_object,
    received_notification,
)
from inbound.message.read import need_for, read_facts, read_with_head
from inbound.observe.log import emit, emit_fields
from inbound.observe.metrics import DispatchMetrics
from inbound.observe.supervise import Backoff
from inbound.rules.book import RuleBook
from inbound.rules.evaluate import PAUSE, evaluate, message_keys
from inbound.spool.retry import (
    DispatchState,
    SpoolMeta,
    StepRecord,
    is_expired,
    next_delay,
    window_start,
)

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
        spool: SpoolPort[SpoolMeta, DispatchState],
        book: RuleBook,
        targets: Targets,
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
        self.targets = targets
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
        run = _MessageRun(self, meta, state)
        await run.load()
        while True:
            plan = run.evaluate()
            if plan.refused is not None:
                # Spooled before its facts were kept, and beyond the MIME limits for a rule
                # with an attachment condition: never run as if every part had been seen.
                await self._failed(meta, run.state, PermanentActionError(plan.refused))
                return
            failed = await run.execute(plan)
            if failed is not None:
                await self._failed(meta, run.state, failed)
                return
            if plan.pending is None:
                break
            failed = await run.execute_pending(plan)
            if failed is not None:
                await self._failed(meta, run.state, failed)
                return
        await asyncio.to_thread(self.spool.finish, message_id)
        age = (self.clock() - meta.received_at).total_seconds()
        self.metrics.dispatch_latency.observe(max(age, 0.0))
        emit(log, "message.dispatched", message_id=message_id, attempts=run.state.attempts + 1)
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


class _MessageRun:
    """One attempt at one message: its rules, its bytes, its recorded progress."""

    def __init__(self, dispatcher: Dispatcher, meta: SpoolMeta, state: DispatchState) -> None:
        self.d = dispatcher
        self.meta = meta
        self.state = state
        self.rules = dispatcher.book.snapshot(meta.rules_digest).compiled
        self.base = b""
        self.headers = b""
        # Succeeded steps not yet on disk. They are saved before the next action runs, so a
        # retry never repeats them; after the last action the message is finished instead
        # (a crash in between repeats that action: at least once, SPEC section 7).
        self.unsaved = False

    async def load(self) -> None:
        source = self.d.spool.source(self.meta.message_id)
        if self.meta.facts is not None:
            self.facts = self.meta.facts  # read once, at receipt
        else:  # none needed, or spooled before facts were kept
            need = need_for(message_keys(self.rules, self.meta.envelope.rcpt_tos))
            self.facts = await asyncio.to_thread(read_facts, source, need)
        received = self._received()
        self.base = await asyncio.to_thread(
            read_with_head, source, lambda block: prepend_headers(block, received)
        )
        end = self.base.find(b"\r\n\r\n")
        self.headers = self.base[: end + 2] if end >= 0 else self.base

    def _received(self) -> ReceivedFacts:
        m = self.meta
        return ReceivedFacts(
            message_id=m.message_id,
            hostname=m.hostname,
            mail_from=m.envelope.mail_from,
            rcpt_tos=m.envelope.rcpt_tos,
            helo=m.connection.helo,
            client_ip=m.connection.client_ip,
            rdns=None,
            tls=m.connection.tls,
            received_at=m.received_at,
            verdicts=m.verdicts,
            auth=m.auth,
        )

    def _recorded(self, rule: int, action: int, _lambda: object) -> str | None:
        record = self.state.steps.get(f"{rule}:{action}")
        if record is None or record.outcome != "succeeded":
            return PAUSE
        return record.result

    def evaluate(self) -> Plan:
        return evaluate(
            self.rules,
            message_id=self.meta.message_id,
            connection=self.meta.connection,
            envelope=self.meta.envelope,
            message=self.facts,
            verdicts=self.meta.verdicts,
            lambda_results=self._recorded,
        )

    async def execute(self, plan: Plan) -> ActionError | None:
        """Run the plan's steps that have not succeeded; the first failure stops the rest."""
        self.content = self.base
        for rule_run in plan.rules:
            for step in rule_run.actions:
                action = step.action
                assert isinstance(action, ActionModel)
                failed = await self._step(rule_run.index, step.index, action, rule_run.recipients)
                if failed is not None:
                    return failed
        return None

    async def execute_pending(self, plan: Plan) -> ActionError | None:
        assert plan.pending is not None
        rule_index, action_index = plan.pending
        action = self.rules.rules[rule_index].actions[action_index]
        recipients = next(r.recipients for r in plan.rules if r.index == rule_index)
        return await self._step(rule_index, action_index, action, recipients)

    async def _step(
        self, rule: int, index: int, action: ActionModel, recipients: tuple[str, ...]
    ) -> ActionError | None:
        if isinstance(action, AddHeaderAction):
            self.content = add_header(self.content, action.name, action.value)
            return None
        key = f"{rule}:{index}"
        record = self.state.steps.get(key)
        if record is not None and record.outcome == "succeeded":
            return None
        attempts = (record.attempts if record else 0) + 1
        kind = action.receipt_type
        if self.unsaved:
            await asyncio.to_thread(self.d.spool.save_state, self.meta.message_id, self.state)
            self.unsaved = False
        fields: dict[str, object] = {
            "message_id": self.meta.message_id,
            "rule": self.rules.rules[rule].name,
            "action": kind,
            "attempt": attempts,
        }
        try:
            result = await action.execute(self._context(recipients), self.d.targets)
        except ActionError as exc:
            self.state.steps[key] = StepRecord("failed", attempts, str(exc), None)
            self.d.metrics.actions.labels(type=kind, outcome="failed").inc()
            failure = {**fields, "transient": exc.transient, "error": str(exc)}
            emit_fields(log, "action.failed", failure, level=logging.WARNING)
            return exc
        self.state.steps[key] = StepRecord("succeeded", attempts, None, result)
        self.unsaved = True
        self.d.metrics.actions.labels(type=kind, outcome="succeeded").inc()
        emit_fields(log, "action.succeeded", fields)
        return None

    def _context(self, recipients: tuple[str, ...]) -> ActionContext:
        content = self.content
        meta = self.meta

        def receipt(action: JsonObject) -> JsonObject:
            elapsed = int((self.d.clock() - meta.received_at).total_seconds() * 1000)
            return receipt_object(
                timestamp=meta.received_at,
                processing_ms=max(elapsed, 0),
                recipients=list(recipients),
                verdicts=meta.verdicts,
                action=action,
            )

        def mail() -> JsonObject:
            return mail_object(
                message_id=meta.message_id,
                timestamp=meta.received_at,
                source=meta.envelope.mail_from,
                raw=content,
            )

        def bounce(code: str, status: str, diagnostic: str, sender: str) -> BounceRequest:
            return BounceRequest(
                message_id=meta.message_id,
                sender=sender or f"MAILER-DAEMON@{meta.hostname}",
                to=meta.envelope.mail_from,
                recipients=recipients,
                smtp_reply_code=code,
                status_code=status,
                diagnostic=diagnostic,
                reporting_mta=meta.hostname,
                original_headers=self.headers,
                arrival=meta.received_at,
            )

        return ActionContext(
            message_id=meta.message_id,
            content=content,
            mail_from=meta.envelope.mail_from,
            recipients=recipients,
            notification=lambda action: received_notification(mail(), receipt(action)),
            lambda_event=lambda action: lambda_event(mail(), receipt(action)),
            bounce=bounce,
            sns_max_bytes=self.d.sns_max_bytes,
            sns_oversize=self.d.sns_oversize,
        )
