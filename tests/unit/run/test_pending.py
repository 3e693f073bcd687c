"""`pending_steps`: what the next attempt would run, from the ledger, running nothing."""

from __future__ import annotations

from inbound.core.steps import StepKey, StepRecord
from inbound.run.ledgers import MemoryLedger
from inbound.run.runner import pending_steps
from tests.unit.run.helpers import compiled, walk
from tests.unit.run.test_runner import RULES


def names(ledger: MemoryLedger) -> list[tuple[str, int, str | None]]:
    """(rule/type, failed attempts, the unknown Lambda it waits on) of each pending step."""
    return [
        (
            f"{p.step.rule.name}/{p.step.action.receipt_type}",
            p.record.attempts if p.record else 0,
            None if p.after is None else str(p.after.key),
        )
        for p in pending_steps(walk(compiled(RULES)), ledger)
    ]


def succeeded(result: str | None = None) -> StepRecord:
    return StepRecord("succeeded", 1, None, result)


def test_nothing_recorded_lists_every_action_but_add_header_the_rest_wait_on_the_lambda() -> None:
    assert names(MemoryLedger()) == [
        ("first/S3", 0, None),
        ("first/Lambda", 0, None),
        ("first/S3", 0, "0:1"),
        ("second/S3", 0, "0:1"),
    ]


def test_a_failed_lambda_is_listed_with_its_attempts_after_what_succeeded() -> None:
    ledger = MemoryLedger(
        {StepKey(0, 0): succeeded(), StepKey(0, 1): StepRecord("failed", 3, "boom", None)}
    )
    assert names(ledger) == [
        ("first/Lambda", 3, None),
        ("first/S3", 0, "0:1"),
        ("second/S3", 0, "0:1"),
    ]


def test_a_recorded_answer_is_replayed_as_the_dispatcher_does() -> None:
    """The Lambda answered STOP_RULE before a later action failed: the rest of its rule is
    not run again, and nothing waits on an unknown answer any more."""
    ledger = MemoryLedger(
        {
            StepKey(0, 0): succeeded(),
            StepKey(0, 1): succeeded("STOP_RULE"),
            StepKey(1, 0): StepRecord("failed", 1, "boom", None),
        }
    )
    assert names(ledger) == [("second/S3", 1, None)]
    ledger.records[StepKey(0, 1)] = succeeded("STOP_RULE_SET")
    assert names(ledger) == []
