"""The dispatcher: one attempt at one spooled message, its actions in order (SPEC section 7).

For a queued message it evaluates the rule set the message was received with, runs the
actions that have not succeeded yet through the target set, and records each outcome before
going on, so a retry (or a restart) never repeats a succeeded action. A request_response
Lambda's disposition is recorded too and steers the next evaluation. It hands the attempt's
outcome back (`inbound.schedule`): when to try again, and dead letters, are not its business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from inbound.actions import ActionModel, AddHeaderAction
from inbound.actions.base import ActionContext, JsonObject
from inbound.core.clock import utc_now
from inbound.core.errors import ActionError, PermanentActionError
from inbound.core.plan import Plan
from inbound.core.ports import SpoolPort
from inbound.core.targets import BounceRequest, Targets
from inbound.message.headers import ReceivedFacts, add_header, prepend_headers
from inbound.message.notification import (
    lambda_event,
    mail_object,
    receipt_object,
    received_notification,
)
from inbound.message.read import need_for, read_facts, read_with_head
from inbound.observe.log import emit_fields
from inbound.observe.metrics import DispatchMetrics
from inbound.rules.book import RuleBook
from inbound.rules.evaluate import PAUSE, evaluate, message_keys
from inbound.schedule import Delivered, Failed, Outcome
from inbound.spool.retry import DispatchState, SpoolMeta, StepRecord

log = logging.getLogger("inbound.dispatch")


class Dispatcher:
    def __init__(
        self,
        spool: SpoolPort[SpoolMeta, DispatchState],
        book: RuleBook,
        targets: Targets,
        *,
        metrics: DispatchMetrics,
        sns_max_bytes: int = 150 * 1024,
        sns_oversize: str = "bounce",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.spool = spool
        self.book = book
        self.targets = targets
        self.metrics = metrics
        self.sns_max_bytes = sns_max_bytes
        self.sns_oversize = sns_oversize
        self.clock = clock

    async def process(self, message_id: str) -> Outcome:
        """Run what is left of one message; say how it went (a `RunMessage`)."""
        meta = await asyncio.to_thread(self.spool.meta, message_id)
        state = await asyncio.to_thread(self.spool.state, message_id)
        run = _MessageRun(self, meta, state)
        await run.load()
        while True:
            plan = run.evaluate()
            if plan.refused is not None:
                # Spooled before its facts were kept, and beyond the MIME limits for a rule
                # with an attachment condition: never run as if every part had been seen.
                return Failed(meta, run.state, PermanentActionError(plan.refused))
            failed = await run.execute(plan)
            if failed is not None:
                return Failed(meta, run.state, failed)
            if plan.pending is None:
                break
            failed = await run.execute_pending(plan)
            if failed is not None:
                return Failed(meta, run.state, failed)
        return Delivered(meta, run.state)


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
