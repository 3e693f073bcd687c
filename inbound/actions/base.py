"""What every action's YAML model shares: strictness, SES field mapping, notification object.

An action module declares its YAML fields, how they map to the SES API (`ses_fields`,
`ses_values`) and to the `receipt.action` object of notifications (`receipt_fields`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, get_args

from pydantic import BaseModel, ConfigDict

from inbound.core.targets import BounceRequest, Targets

JsonObject = dict[str, object]


@dataclass(frozen=True)
class ActionContext:
    """What an executing action may know: the message as later actions see it, the rule's
    recipients, and builders for the SES objects of this message."""

    message_id: str
    # The message with the prepended headers and the headers added by earlier actions.
    content: bytes
    mail_from: str
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


class ActionModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # The key of this action in the SES API's ReceiptAction union, e.g. "S3Action".
    ses_key: ClassVar[str]
    # The `receipt.action.type` of notifications, e.g. "S3".
    receipt_type: ClassVar[str]
    # SES API field name -> YAML field name.
    ses_fields: ClassVar[dict[str, str]]
    # YAML field -> {YAML value: SES API value}, for enums spelt differently.
    ses_values: ClassVar[dict[str, dict[str, str]]] = {}
    # SES API fields that have one fixed value and no YAML field (StopAction.Scope).
    ses_constants: ClassVar[dict[str, str]] = {}
    # notification field name -> YAML field name, in SES's order.
    receipt_fields: ClassVar[dict[str, str]]
    # True for actions that store or deliver the message (SPEC section 2, in-session bounce).
    delivers: ClassVar[bool] = False

    def receipt_action(self, message_id: str) -> dict[str, object]:
        """The `receipt.action` object of notifications for this action (SPEC section 3)."""
        out: dict[str, object] = {"type": self.receipt_type}
        for receipt_name, field in self.receipt_fields.items():
            value = getattr(self, field)
            if value is None:
                continue  # SES omits unset fields (topicArn, statusCode)
            out[receipt_name] = value
        return out

    async def execute(self, ctx: ActionContext, targets: Targets) -> str | None:
        """Run the action; return a result worth recording (a Lambda disposition) or None.

        The default records and does nothing: `workmail` and `connect` exist for round trips
        with SES and are not executed locally (SPEC section 1)."""
        return None

    async def notify(self, ctx: ActionContext, targets: Targets) -> None:
        """Publish the Received notification (no content) to this action's topic, if any."""
        topic = getattr(self, "topic_arn", None)
        if topic:
            await targets.publish(topic, ctx.notification(self.receipt_action(ctx.message_id)))

    def to_ses(self) -> dict[str, object]:
        """This action as the SES API's ReceiptAction member, e.g. {"S3Action": {...}}."""
        body: dict[str, object] = dict(self.ses_constants)
        for ses_name, field in self.ses_fields.items():
            value = getattr(self, field)
            if value is None:
                continue
            body[ses_name] = self.ses_values.get(field, {}).get(value, value)
        return {self.ses_key: body}

    @classmethod
    def yaml_type(cls) -> str:
        """The `type:` of this action in YAML, e.g. "s3"."""
        (name,) = get_args(cls.model_fields["type"].annotation)
        return str(name)
