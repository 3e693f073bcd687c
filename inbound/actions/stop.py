"""The `stop` action: end the evaluation of the rule set (SES StopAction, scope RuleSet)."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionContext, ActionModel, SesMapping
from inbound.config.fields import TopicArn
from inbound.core.services import Services
from inbound.core.steps import CONTINUE, Outcome


class StopAction(ActionModel):
    receipt_type = "Stop"
    ses = SesMapping("StopAction", {"TopicArn": "topic_arn"}, constants={"Scope": "RuleSet"})
    stops_rule_set = True
    receipt_fields = {"topicArn": "topic_arn"}

    type: Literal["stop"]
    topic_arn: TopicArn | None = None

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        await self.notify(ctx, services)
        return CONTINUE
