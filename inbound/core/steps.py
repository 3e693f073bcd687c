"""What passes between evaluation and execution, one step at a time, as values.

The evaluator (`inbound.rules.steps`) hands out a step (a rule's action and its recipients);
the runner (`inbound.run.runner`) executes it and hands back an `Outcome`: how evaluation goes
on (`Flow`) and, for `add_header`, the message as later actions see it. What a step did is kept
in a `Ledger` as a `StepRecord` under a `StepKey`, so a retry (or a redelivered SES event) never
repeats a step that succeeded (SPEC section 7).

This module owns those value types, the parsing of a Lambda's disposition into a `Flow` (the
only place that reads one), and the key format of every ledger. It must not do I/O, know an
action, or know where a ledger keeps its records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Protocol


class Flow(enum.Enum):
    """How evaluation goes on after a step (SES's Lambda dispositions, SPEC section 2)."""

    CONTINUE = "CONTINUE"
    STOP_RULE = "STOP_RULE"
    STOP_RULE_SET = "STOP_RULE_SET"


def parse_disposition(value: object) -> Flow:
    """A request_response function's disposition: SES stops only on `STOP_RULE` and
    `STOP_RULE_SET`; anything else (CONTINUE, missing, empty, not a string) goes on."""
    if value == "STOP_RULE":
        return Flow.STOP_RULE
    if value == "STOP_RULE_SET":
        return Flow.STOP_RULE_SET
    return Flow.CONTINUE


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one executed (or assumed, or replayed) step gives back to evaluation."""

    flow: Flow = Flow.CONTINUE
    # Worth recording and showing: a Lambda's disposition as it answered, or a note such as
    # "no DSN: null sender". A disposition is replayed from it on a retry.
    detail: str | None = None
    # add_header: the message as the later actions see it (None: unchanged).
    content: bytes | None = None

    @classmethod
    def disposition(cls, answered: str | None) -> Outcome:
        """The outcome of a request_response function that answered `answered`."""
        return cls(parse_disposition(answered), answered)


CONTINUE = Outcome()


@dataclass(frozen=True, slots=True, order=True)
class StepKey:
    """Where a step's record is kept: positions in the rule set the message was received with,
    and the recipient for an action that records each destination apart."""

    rule: int
    action: int
    recipient: str | None = None

    def __str__(self) -> str:
        # "RULE:ACTION" is the format of every state written so far (the spool's dispatch
        # state, the SES handler's S3 state): a step without a recipient keeps it, so old
        # state reads.
        base = f"{self.rule}:{self.action}"
        return base if self.recipient is None else f"{base}:{self.recipient}"

    @classmethod
    def parse(cls, text: str) -> StepKey:
        rule, sep, rest = text.partition(":")
        action, sep2, recipient = rest.partition(":")
        if not sep or not rule.isdigit() or not action.isdigit():
            raise ValueError(f"{text!r} is not a step key (RULE:ACTION[:RECIPIENT])")
        return cls(int(rule), int(action), recipient if sep2 else None)


@dataclass
class StepRecord:
    """The outcome of one action of the plan, over every attempt so far."""

    outcome: Literal["succeeded", "failed"]
    attempts: int
    last_error: str | None = None
    result: str | None = None  # `Outcome.detail`: e.g. the disposition a Lambda returned

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"


class Ledger(Protocol):
    """The step records of one message. `put` may keep a record in memory only; `flush` makes
    every record put so far durable. The runner flushes before it runs an action, so a retry
    never repeats one that succeeded; its caller flushes (or finishes) at the end."""

    def get(self, key: StepKey) -> StepRecord | None: ...

    def put(self, key: StepKey, record: StepRecord) -> None: ...

    async def flush(self) -> None: ...
