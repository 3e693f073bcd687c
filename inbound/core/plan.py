"""The decision for one message: what the session answers and which actions run, in order.

A `Plan` is produced by `inbound.rules.evaluate` (pure) and consumed by the receiver (replies),
the dispatcher (actions) and the command line (trace, JSON). It holds no I/O handles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from inbound.core.reply import SmtpReply
from inbound.core.verdicts import Verdicts

Stop = Literal["Stop", "STOP_RULE", "STOP_RULE_SET"]
Outcome = Literal["accepted", "rejected"]


class ActionSpec(Protocol):
    """What the plan needs of a configured action (the models of `inbound.actions`)."""

    @property
    def receipt_type(self) -> str: ...

    def receipt_action(self, message_id: str) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class ConnectionDecision:
    client_ip: str
    accepted: bool
    # The name of the filter that decided, when one matched.
    filter: str | None = None
    reply: SmtpReply | None = None


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    address: str
    reply: SmtpReply
    # Why, in words, for the trace ("matched by rule support", "no enabled rule matches").
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.reply.is_success


@dataclass(frozen=True, slots=True)
class ActionStep:
    action: ActionSpec
    # Position in the rule's action list, so a retry can tell steps apart.
    index: int
    receipt: dict[str, object]
    # For a request_response Lambda: the disposition its result gave.
    disposition: str | None = None


@dataclass(frozen=True, slots=True)
class RuleRun:
    """A rule that applied to the message, with the actions evaluation reached."""

    name: str
    index: int
    recipients: tuple[str, ...]
    actions: tuple[ActionStep, ...]
    stop: Stop | None = None


@dataclass(frozen=True, slots=True)
class RuleSkip:
    """A rule that matched a recipient but did not apply, and why."""

    name: str
    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    message_id: str
    connection: ConnectionDecision
    recipients: tuple[RecipientDecision, ...] = ()
    data_reply: SmtpReply | None = None
    verdicts: Verdicts = field(default_factory=Verdicts)
    rules: tuple[RuleRun, ...] = ()
    skipped: tuple[RuleSkip, ...] = ()
    # Set when a bounce answers DATA in the session (SPEC section 2): (rule name, action index).
    session_bounce: tuple[str, int] | None = None
    # Set when evaluation waits for a request_response Lambda's result: (rule index, action index).
    pending: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()
    # Set when the message is refused before any rule is tried, and why: its MIME structure is
    # beyond the limits and a rule that may apply has an attachment condition. `data_reply`
    # is then `554 5.6.0` and there are no rules.
    refused: str | None = None

    @property
    def outcome(self) -> Outcome:
        return (
            "accepted" if self.data_reply is not None and self.data_reply.is_success else "rejected"
        )

    @property
    def accepted_recipients(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.accepted)
