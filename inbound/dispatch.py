"""The dispatcher: one attempt at one spooled message, its actions in order (SPEC section 7).

For a queued message it reads its meta, its state and the message itself (`read_message`,
through the spool's message source) in one batch with the other messages due at the same time,
in one thread (`inbound.batch`: a thread hop per batch, not three per message), and hands it
to the one runner (`inbound.run.runner.run_message`) with the rule set the message was received
with and the spool's step ledger, so a retry (or a restart) never repeats a succeeded action.
It hands the attempt's outcome back (`inbound.schedule`): when to try again, and dead letters,
are not its business; running an action itself is not either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from inbound.batch import Batcher
from inbound.core.clock import utc_now
from inbound.core.errors import ActionError, PermanentActionError
from inbound.core.message import MessageFacts, MimeLimits
from inbound.core.ports import MessageSource, SpoolPort
from inbound.core.services import Services
from inbound.core.steps import StepKey, StepRecord
from inbound.core.verdicts import DmarcPolicy
from inbound.message.headers import prepend_headers
from inbound.message.read import need_for, read_facts, read_with_head
from inbound.observe.log import emit_fields
from inbound.observe.metrics import DispatchMetrics
from inbound.rules.book import RuleBook
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import Evaluation, Step, message_keys
from inbound.run.context import RunSubject
from inbound.run.ledgers import SpoolLedger
from inbound.run.runner import run_message
from inbound.schedule import Delivered, Failed, Outcome
from inbound.spool.retry import DispatchState, SpoolMeta

log = logging.getLogger("inbound.dispatch")


@dataclass(frozen=True)
class Loaded:
    """What one attempt reads of a queued message before it runs anything."""

    meta: SpoolMeta
    state: DispatchState
    rules: CompiledRuleSet
    facts: MessageFacts
    base: bytes  # the message with the prepended headers


class Dispatcher:
    def __init__(
        self,
        spool: SpoolPort[SpoolMeta, DispatchState],
        book: RuleBook,
        services: Services,
        *,
        metrics: DispatchMetrics,
        sns_max_bytes: int = 150 * 1024,
        sns_oversize: str = "bounce",
        mime_limits: MimeLimits | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.spool = spool
        self.book = book
        self.services = services
        self.metrics = metrics
        self.sns_max_bytes = sns_max_bytes
        self.sns_oversize = sns_oversize
        self.mime_limits = mime_limits or MimeLimits()
        self.clock = clock
        self._loads: Batcher[str, Loaded] = Batcher("dispatch-load", self._load_many)
        # Successes recorded before the next action runs (a success earlier in the message
        # must not be repeated), for every message running: one thread, one hop, one journal
        # write and one fdatasync per batch.
        self._steps: Batcher[tuple[str, list[tuple[str, StepRecord]]], None] = Batcher(
            "dispatch-steps", self._record_many
        )

    def load(self, message_id: str) -> Loaded:
        """Read a queued message for an attempt (blocks on the disk)."""
        meta = self.spool.meta(message_id)
        state = self.spool.state(message_id)
        rules = self.book.snapshot(meta.rules_digest).compiled
        facts, base = read_message(self.spool, meta, rules)
        return Loaded(meta, state, rules, facts, base)

    def _load_many(self, message_ids: Sequence[str]) -> list[Loaded | Exception]:
        loaded: list[Loaded | Exception] = []
        for message_id in message_ids:
            try:
                loaded.append(self.load(message_id))
            except Exception as exc:  # that attempt fails, and no other
                loaded.append(exc)
        return loaded

    def _record_many(
        self, batch: Sequence[tuple[str, list[tuple[str, StepRecord]]]]
    ) -> list[Exception | None]:
        # One write for the whole batch: if it fails, every message's attempt fails.
        self.spool.record_steps([(m, key, record) for m, steps in batch for key, record in steps])
        return [None] * len(batch)

    async def _record(self, message_id: str, steps: list[tuple[str, StepRecord]]) -> None:
        await self._steps.submit((message_id, steps))

    async def process(self, message_id: str) -> Outcome:
        """Run what is left of one message; say how it went (a `RunMessage`)."""
        loaded = await self._loads.submit(message_id)
        meta, state, rules, facts, base = (
            loaded.meta,
            loaded.state,
            loaded.rules,
            loaded.facts,
            loaded.base,
        )
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
            dmarc_published=_policy(meta.auth.dmarc_policy),
            mime_limits=self.mime_limits,
        )
        ledger = SpoolLedger(self.spool, message_id, state, record=self._record)
        result = await run_message(
            walk, subject, self.services, ledger, _ActionLog(message_id, self.metrics)
        )
        if result.plan.refused is not None:
            # Spooled before its facts were kept, and beyond the MIME limits for a rule
            # with an attachment condition: never run as if every part had been seen.
            return Failed(meta, state, PermanentActionError(result.plan.refused))
        if result.failed is not None:
            return Failed(meta, state, result.failed)
        return Delivered(meta, state)


def _policy(word: str) -> DmarcPolicy | None:
    try:
        return DmarcPolicy(word) if word else None
    except ValueError:
        return None


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
        if key.recipient is not None:  # one destination of a forward
            fields["destination"] = key.recipient
        if error is None:
            self.metrics.actions.labels(type=kind, outcome="succeeded").inc()
            emit_fields(log, "action.succeeded", fields)
            return
        self.metrics.actions.labels(type=kind, outcome="failed").inc()
        failure = {**fields, "transient": error.transient, "error": str(error)}
        emit_fields(log, "action.failed", failure, level=logging.WARNING)


def read_message(
    spool: SpoolPort[SpoolMeta, DispatchState], meta: SpoolMeta, rules: CompiledRuleSet
) -> tuple[MessageFacts, bytes]:
    """The facts of a spooled message and its bytes with the prepended headers (SPEC section
    3): the one place the dispatcher reads a message, through the spool's message source."""
    source = spool.source(meta.message_id)
    facts = message_facts(source, meta, rules)
    received = meta.received()
    return facts, read_with_head(source, lambda block: prepend_headers(block, received))


def message_facts(source: MessageSource, meta: SpoolMeta, rules: CompiledRuleSet) -> MessageFacts:
    """What the rules read of a spooled message: kept at receipt, or (none were needed, or it
    was spooled before facts were kept) read from its bytes now. `inbound spool show` too."""
    if meta.facts is not None:
        return meta.facts
    return read_facts(source, need_for(message_keys(rules, meta.envelope.rcpt_tos)))
