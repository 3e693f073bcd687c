"""The one loop that runs a decided message: `run_message`.

It drives an `Evaluation` step by step: for each step it asks the ledger whether the step
succeeded before (then the recorded outcome is replayed, and the action does not run again),
otherwise flushes the ledger and runs the action's executor through the `Services`, records
what happened, and sends the outcome back to the evaluation, which decides the next step. A
Lambda that answers anything at all can only move the walk forward: there is no second pass.

`inbound serve` (the dispatcher, with the spool ledger), the SES Lambda handler and `ses
consume` (with the S3 ledger) and the tests (with the memory ledger and the in-memory
services) all run messages through here.

This module owns the order of execute, record and flush. It must not decide (the evaluation
does), read or write any store itself (the ledger and the services do), retry or schedule (the
dispatcher or SES does), or log in a way particular to an entry point (`StepObserver`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from inbound.actions.base import Parts
from inbound.core.errors import ActionError
from inbound.core.plan import Plan
from inbound.core.services import Services
from inbound.core.steps import CONTINUE, Ledger, Outcome, StepKey, StepRecord
from inbound.rules.evaluate import Evaluation, Step
from inbound.run.context import RunSubject, action_context


class StepObserver(Protocol):
    """Told of every action that ran (not of replayed or pure steps): logs and metrics."""

    def ran(self, step: Step, key: StepKey, attempt: int, error: ActionError | None) -> None: ...


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the plan it reached, and the failure that stopped it, if one did."""

    plan: Plan
    failed: ActionError | None = None
    # The step that failed (its action did not succeed; nothing after it ran).
    failed_step: Step | None = None


async def run_message(
    walk: Evaluation,
    subject: RunSubject,
    services: Services,
    ledger: Ledger,
    observer: StepObserver | None = None,
) -> RunResult:
    """Run what is left of one message; the first failing action stops the run.

    The caller settles the ledger at the end: the dispatcher finishes the message (or saves
    the state with the failure), the SES handler flushes."""
    if walk.refused is not None:
        return RunResult(walk.plan())
    content = subject.base
    while (step := walk.next_step()) is not None:
        action = step.action
        key = step.key
        record = None if action.pure else ledger.get(key)
        replayed = _replayed(step, record)
        if replayed is not None:
            outcome = replayed
        else:
            context = action_context(
                subject,
                content,
                step.recipients,
                walk.verdicts,
                rule=step.rule.name,
                step=key,
                patterns=step.rule.model.recipients,
            )
            attempt = (record.attempts if record is not None else 0) + 1
            if action.pure:
                outcome = await action.execute(context, services)
            else:
                await ledger.flush()
                try:
                    parts = await action.parts(context, services)
                    if parts is None:
                        outcome = await action.execute(context, services)
                    else:
                        outcome = await _run_parts(step, parts, ledger, observer)
                except _PartFailedError as failed:  # recorded and told under the part's own key
                    ledger.put(key, StepRecord("failed", attempt, str(failed.error), None))
                    return RunResult(walk.plan(), failed.error, step)
                except ActionError as exc:
                    ledger.put(key, StepRecord("failed", attempt, str(exc), None))
                    if observer is not None:
                        observer.ran(step, key, attempt, exc)
                    return RunResult(walk.plan(), exc, step)
                ledger.put(key, StepRecord("succeeded", attempt, None, outcome.detail))
                if observer is not None:
                    observer.ran(step, key, attempt, None)
        if outcome.content is not None:
            content = outcome.content
        walk.send(outcome)
    return RunResult(walk.plan())


class _PartFailedError(Exception):
    """A part of a step failed (already recorded and told under its own key)."""

    def __init__(self, error: ActionError) -> None:
        super().__init__(str(error))
        self.error = error


async def _run_parts(
    step: Step, parts: Parts, ledger: Ledger, observer: StepObserver | None
) -> Outcome:
    """Each part not yet done, in order, recorded apart as a step of its own: flushed before
    it runs (a part that succeeded is never sent again), its record put after. The first
    failing part raises; the parts after it wait for the next attempt."""
    for name in parts.names:
        key = replace(step.key, recipient=name)
        record = ledger.get(key)
        if record is not None and record.succeeded:
            continue
        attempt = (record.attempts if record is not None else 0) + 1
        await ledger.flush()
        try:
            detail = await parts.send(name)
        except ActionError as exc:
            ledger.put(key, StepRecord("failed", attempt, str(exc), None))
            if observer is not None:
                observer.ran(step, key, attempt, exc)
            raise _PartFailedError(exc) from exc
        ledger.put(key, StepRecord("succeeded", attempt, None, detail))
        if observer is not None:
            observer.ran(step, key, attempt, None)
    return parts.outcome


def _replayed(step: Step, record: StepRecord | None) -> Outcome | None:
    """The outcome a retry takes from the ledger instead of running the step (None: it runs)."""
    if step.action.pure or record is None or not record.succeeded:
        return None
    return step.action.replay(record.result)


@dataclass(frozen=True)
class PendingStep:
    """A step the next attempt would run (`inbound spool show`)."""

    step: Step
    record: StepRecord | None  # its failed attempts so far; None: never tried
    # The earlier request_response Lambda not run yet that this step waits on: it runs only if
    # that function answers CONTINUE (None: nothing before it is unknown).
    after: Step | None


def pending_steps(walk: Evaluation, ledger: Ledger) -> list[PendingStep]:
    """What `run_message` would run next, in order, without running anything: the walk takes
    the recorded outcomes as a retry does; a step not yet succeeded is assumed to continue (a
    Lambda's answer is not known before it runs, so the steps after it depend on it). Pure
    steps (add_header) are re-applied on every attempt, never recorded: not listed; `stop` is
    recorded like any action (it may publish to its topic), and listed."""
    pending: list[PendingStep] = []
    unknown: Step | None = None
    if walk.refused is not None:
        return pending
    while (step := walk.next_step()) is not None:
        record = None if step.action.pure else ledger.get(step.key)
        replayed = _replayed(step, record)
        if replayed is not None:
            walk.send(replayed)
            continue
        if not step.action.pure:
            pending.append(PendingStep(step, record, unknown))
            if step.action.awaits_result and unknown is None:
                unknown = step
        walk.send(CONTINUE)
    return pending
