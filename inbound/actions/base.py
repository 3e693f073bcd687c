"""What every action shares: its YAML model, its executor, and an optional SES mapping.

An action module declares a subclass of `ActionModel`: its YAML fields (pydantic, strict), the
`receipt.action` object of its notifications (`receipt_type`, `receipt_fields`), one executor
(`execute`, returning the step's `Outcome`), the few facts evaluation needs of it (`delivers`,
`stops_rule_set`, `awaits_result`, `session_reply`, `pure`), and, if SES has the same action,
an `SesMapping` (`ses`). An action without one runs only in `inbound serve` and the SES
Lambda handler; `ses export` refuses it by name.

This module must not know any particular action, nor where the services are: executors reach
the outside world only through `Services`, and the message only through `ActionContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, get_args

from pydantic import BaseModel, ConfigDict

from inbound.core.message import MimeLimits
from inbound.core.reply import SmtpReply
from inbound.core.services import BounceRequest, Services
from inbound.core.steps import CONTINUE, Outcome, StepKey
from inbound.core.verdicts import DmarcPolicy, Verdicts

JsonObject = dict[str, object]


@dataclass(frozen=True)
class ActionContext:
    """What an executing action may know: the message as later actions see it, the rule's
    recipients, and builders for the SES objects of this message (`inbound.run.context`)."""

    message_id: str
    # The message with the prepended headers and the headers added by earlier actions.
    content: bytes
    mail_from: str
    # When the message was received (SRS addresses are verified as of then; a webhook's
    # payload says it).
    received_at: datetime
    recipients: tuple[str, ...]
    # The Received notification (mail + receipt, no content) for a `receipt.action` object.
    notification: Callable[[JsonObject], JsonObject]
    # The SES Lambda event for a `receipt.action` object.
    lambda_event: Callable[[JsonObject], JsonObject]
    # A DSN for this message: (smtp reply code, status, diagnostic, sender) -> request.
    bounce: Callable[[str, str, str, str], BounceRequest]
    # Messages larger than this are not published whole by an SNS action (SES: 150 KB) ...
    sns_max_bytes: int = 150 * 1024
    # ... they bounce, as SES does ("bounce"), or the notification goes without `content`
    # ("omit-content": consumers fetch the message from an S3 action's object).
    sns_oversize: str = "bounce"
    # The step: its rule's name and its place in the rule set (a webhook's stable id; a forward
    # numbers its sends by it).
    rule: str = ""
    step: StepKey = field(default_factory=lambda: StepKey(0, 0))
    # The verdicts evaluation decided with, and the DMARC policy the From domain publishes
    # whatever the result (None: unknown), for a forward's `when_dmarc`.
    verdicts: Verdicts = field(default_factory=Verdicts)
    dmarc_published: DmarcPolicy | None = None
    # How far a webhook's `parsed` payload walks the MIME tree (`serve --max-mime-parts` and
    # `--max-mime-depth`, as the receiver's own parse).
    mime_limits: MimeLimits = field(default_factory=MimeLimits)
    # The receiver's host name (None on the SES side): a forward's loop marker.
    hostname: str | None = None
    # The recipient patterns of the step's rule, for a forward's `\1` destinations.
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parts:
    """An action whose destinations are each one step of the run (SPEC 3b `forward`): the
    runner records each part apart under `StepKey(rule, action, name)`, runs only those not
    yet done, and records the step itself with `outcome` once every part is."""

    names: tuple[str, ...]
    # Runs one part; gives back the detail worth recording for it.
    send: Callable[[str], Awaitable[str | None]]
    outcome: Outcome = CONTINUE


@dataclass(frozen=True)
class RuleProblem:
    """A mistake (or, with `warning`, a likely one) of an action in its rule, found at load:
    `path` is below the action's own (`("to", 0)`)."""

    path: tuple[str | int, ...]
    message: str
    warning: bool = False


@dataclass(frozen=True)
class SesMapping:
    """How an action is spelt in the SES API (`ses export`, `ses import`)."""

    # The key of this action in the SES API's ReceiptAction union, e.g. "S3Action".
    key: str
    # SES API field name -> YAML field name.
    fields: Mapping[str, str]
    # YAML field -> {YAML value: SES API value}, for enums spelt differently.
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # SES API fields that have one fixed value and no YAML field (StopAction.Scope).
    constants: Mapping[str, str] = field(default_factory=dict)


class NoSesMappingError(ValueError):
    """The action has no SES twin: it runs only locally or in the inbound Lambda handler."""


class ActionModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # The `receipt.action.type` of notifications (and the action's name in logs), e.g. "S3".
    receipt_type: ClassVar[str]
    # notification field name -> YAML field name, in SES's order.
    receipt_fields: ClassVar[dict[str, str]]
    # The SES API spelling; None: SES has no such action.
    ses: ClassVar[SesMapping | None] = None
    # True for actions that store or deliver the message (SPEC section 2, in-session bounce).
    delivers: ClassVar[bool] = False
    # True for `stop`: evaluation ends after it, whatever its executor gives back.
    stops_rule_set: ClassVar[bool] = False
    # True for actions that only derive the message (add_header): run again on every attempt,
    # never recorded, so their content is there for the actions after them.
    pure: ClassVar[bool] = False

    @property
    def awaits_result(self) -> bool:
        """Whether evaluation can go on only with what running this action gave back (a
        request_response Lambda). The decision in the session stops before such a step."""
        return False

    def config_warnings(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Likely mistakes `inbound check` warns about: (path within the action, message)."""
        return []

    def environment_issues(self, env: Mapping[str, str]) -> list[tuple[tuple[str | int, ...], str]]:
        """What this action needs from the environment and does not find in `env`."""
        return []

    def session_reply(self) -> SmtpReply | None:
        """The reply to DATA if this action runs before any delivering action (bounce)."""
        return None

    def receipt_action(self, message_id: str) -> dict[str, object]:
        """The `receipt.action` object of notifications for this action (SPEC section 3)."""
        out: dict[str, object] = {"type": self.receipt_type}
        for receipt_name, name in self.receipt_fields.items():
            value = getattr(self, name)
            if value is None:
                continue  # SES omits unset fields (topicArn, statusCode)
            out[receipt_name] = value
        return out

    def problems_in_rule(
        self, recipients: Sequence[str], domains: Sequence[str]
    ) -> Iterable[RuleProblem]:
        """What is wrong with this action given its rule's `recipients` patterns and the
        rule set's receiving `domains` (checks one field alone cannot make)."""
        return ()

    async def parts(self, ctx: ActionContext, services: Services) -> Parts | None:
        """The parts of this step when each is recorded apart (a forward's destinations);
        None (the default): the step is one, and `execute` runs it."""
        return None

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        """Run the action; give back how evaluation goes on and anything worth recording.

        The default does nothing: `workmail` and `connect` exist for round trips with SES and
        are not executed locally (SPEC section 1)."""
        return CONTINUE

    def replay(self, detail: str | None) -> Outcome:
        """The outcome of this step on a retry, from what its successful run recorded."""
        return Outcome(detail=detail)

    async def notify(self, ctx: ActionContext, services: Services) -> None:
        """Publish the Received notification (no content) to this action's topic, if any."""
        topic = getattr(self, "topic_arn", None)
        if topic:
            notification = ctx.notification(self.receipt_action(ctx.message_id))
            await services.topics.publish(topic, notification)

    def to_ses(self) -> dict[str, object]:
        """This action as the SES API's ReceiptAction member, e.g. {"S3Action": {...}}."""
        ses = self.ses
        if ses is None:
            raise NoSesMappingError(f"the {self.yaml_type()} action has no SES equivalent")
        body: dict[str, object] = dict(ses.constants)
        for ses_name, name in ses.fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            body[ses_name] = ses.values.get(name, {}).get(value, value)
        return {ses.key: body}

    @classmethod
    def yaml_type(cls) -> str:
        """The `type:` of this action in YAML, e.g. "s3"."""
        (name,) = get_args(cls.model_fields["type"].annotation)
        return str(name)
