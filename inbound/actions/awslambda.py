"""The `lambda` action: invoke a function with the SES event (SES LambdaAction)."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionContext, ActionModel, SesMapping
from inbound.config.fields import FunctionArn, TopicArn, function_name
from inbound.core.services import Services
from inbound.core.steps import CONTINUE, Outcome

_INVOCATION = {"event": "Event", "request_response": "RequestResponse"}


class LambdaAction(ActionModel):
    receipt_type = "Lambda"
    ses = SesMapping(
        "LambdaAction",
        {
            "FunctionArn": "function_arn",
            "InvocationType": "invocation_type",
            "TopicArn": "topic_arn",
        },
        {"invocation_type": _INVOCATION},
    )
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
        out["invocationType"] = _INVOCATION[self.invocation_type]
        return out

    @property
    def awaits_result(self) -> bool:
        return self.invocation_type == "request_response"

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        event = ctx.lambda_event(self.receipt_action(ctx.message_id))
        wait = self.awaits_result
        result = await services.functions.invoke(self.function_arn, event, wait=wait)
        await self.notify(ctx, services)
        if not wait:
            return CONTINUE
        # SES reads {"disposition": ...}; anything else continues (SPEC section 2). The text is
        # kept as answered (for the trace and the ledger); only `Flow` steers evaluation.
        disposition = result.get("disposition") if isinstance(result, dict) else None
        return Outcome.disposition(disposition if isinstance(disposition, str) else "CONTINUE")

    def replay(self, detail: str | None) -> Outcome:
        if not self.awaits_result:
            return Outcome(detail=detail)
        return Outcome.disposition(detail)
