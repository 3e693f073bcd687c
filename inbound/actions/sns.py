"""The `sns` action: publish the Received notification with the message (SES SNSAction)."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionContext, ActionModel, SesMapping
from inbound.config.fields import TopicArn
from inbound.core.services import Services
from inbound.core.steps import CONTINUE, Outcome
from inbound.message.notification import encode_content

# The notification spells the encoding differently from the API ("UTF8" vs "UTF-8").
_RECEIPT_ENCODING = {"utf-8": "UTF8", "base64": "BASE64"}


class SnsAction(ActionModel):
    receipt_type = "SNS"
    ses = SesMapping(
        "SNSAction",
        {"TopicArn": "topic_arn", "Encoding": "encoding"},
        {"encoding": {"utf-8": "UTF-8", "base64": "Base64"}},
    )
    receipt_fields = {"topicArn": "topic_arn", "encoding": "encoding"}
    delivers = True

    type: Literal["sns"]
    topic_arn: TopicArn
    encoding: Literal["utf-8", "base64"] = "utf-8"

    def receipt_action(self, message_id: str) -> dict[str, object]:
        out = super().receipt_action(message_id)
        out["encoding"] = _RECEIPT_ENCODING[self.encoding]
        return out

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        notification = ctx.notification(self.receipt_action(ctx.message_id))
        if len(ctx.content) <= ctx.sns_max_bytes:
            notification["content"] = encode_content(ctx.content, self.encoding)
        elif ctx.sns_oversize == "bounce":
            # SES: "Larger emails bounce" (SNSAction, 150 KB with headers).
            if ctx.mail_from:
                message = "Message too large to publish (over the SNS action's size limit)"
                await services.mailer.send_bounce(ctx.bounce("552", "5.3.4", message, ""))
            return Outcome(detail="bounced: too large for SNS")
        await services.topics.publish(self.topic_arn, notification)
        if "content" in notification:
            return CONTINUE
        return Outcome(detail="published without content: too large")
