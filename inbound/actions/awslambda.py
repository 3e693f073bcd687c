"""The `lambda` action: invoke a function with the SES event (SES LambdaAction)."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionContext, ActionModel
from inbound.config.fields import FunctionArn, TopicArn, function_name
from inbound.core.targets import Targets


class LambdaAction(ActionModel):
    ses_key = "LambdaAction"
    receipt_type = "Lambda"
    ses_fields = {
        "FunctionArn": "function_arn",
        "InvocationType": "invocation_type",
        "TopicArn": "topic_arn",
    }
    ses_values = {"invocation_type": {"event": "Event", "request_response": "RequestResponse"}}
    receipt_fields = {
        "topicArn": "topic_arn",
        "functionArn": "function_arn",
        "invocationType": "invocation_type",
    }
    delivers = True

    type: Literal["lambda"]
    function_arn: FunctionArn
    # SES's default is Event.
    invocation_type: Literal["event", "request_response"] = "event"
    topic_arn: TopicArn | None = None

    @property
    def function_name(self) -> str:
        return function_name(self.function_arn)

    def receipt_action(self, message_id: str) -> dict[str, object]:
        out = super().receipt_action(message_id)
        out["invocationType"] = self.ses_values["invocation_type"][self.invocation_type]
        return out

    async def execute(self, ctx: ActionContext, targets: Targets) -> str | None:
        event = ctx.lambda_event(self.receipt_action(ctx.message_id))
        wait = self.invocation_type == "request_response"
        result = await targets.invoke(self.function_arn, event, wait=wait)
        await self.notify(ctx, targets)
        if not wait:
            return None
        # SES reads {"disposition": ...}; anything else continues (SPEC section 2).
        disposition = result.get("disposition") if isinstance(result, dict) else None
        return disposition if isinstance(disposition, str) else "CONTINUE"
