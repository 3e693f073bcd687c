"""The `stop` action: end the evaluation of the rule set (SES StopAction, scope RuleSet)."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionContext, ActionModel
from inbound.config.fields import TopicArn
from inbound.core.targets import Targets


class StopAction(ActionModel):
    ses_key = "StopAction"
    receipt_type = "Stop"
    ses_fields = {"TopicArn": "topic_arn"}
    ses_constants = {"Scope": "RuleSet"}
    receipt_fields = {"topicArn": "topic_arn"}

    type: Literal["stop"]
    topic_arn: TopicArn | None = None

    async def execute(self, ctx: ActionContext, targets: Targets) -> str | None:
        await self.notify(ctx, targets)
        return None
