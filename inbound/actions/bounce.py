"""The `bounce` action: reject in the session or send a DSN (SES BounceAction, SPEC section 2)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from inbound.actions.base import ActionContext, ActionModel, SesMapping
from inbound.config.fields import Address, NonEmpty, ReplyCode, StatusCode, TopicArn
from inbound.core.reply import SmtpReply
from inbound.core.services import Services
from inbound.core.steps import CONTINUE, Outcome


class BounceAction(ActionModel):
    receipt_type = "Bounce"
    ses = SesMapping(
        "BounceAction",
        {
            "SmtpReplyCode": "smtp_reply_code",
            "StatusCode": "status_code",
            "Message": "message",
            "Sender": "sender",
            "TopicArn": "topic_arn",
        },
    )
    receipt_fields = {
        "topicArn": "topic_arn",
        "smtpReplyCode": "smtp_reply_code",
        "statusCode": "status_code",
        "message": "message",
        "sender": "sender",
    }

    type: Literal["bounce"]
    smtp_reply_code: ReplyCode
    status_code: StatusCode | None = None
    message: NonEmpty
    sender: Address
    topic_arn: TopicArn | None = None

    @model_validator(mode="after")
    def _classes_agree(self) -> BounceAction:
        # RFC 3463 §3: the status class must agree with the reply code's first digit.
        if self.status_code and self.status_code[0] != self.smtp_reply_code[0]:
            raise ValueError(
                f"status_code {self.status_code} does not agree with "
                f"smtp_reply_code {self.smtp_reply_code}"
            )
        return self

    def reply(self) -> SmtpReply:
        status = self.status_code or f"{self.smtp_reply_code[0]}.0.0"
        return SmtpReply(int(self.smtp_reply_code), status, self.message)

    def session_reply(self) -> SmtpReply:
        return self.reply()

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        outcome = CONTINUE
        if ctx.mail_from:
            reply = self.reply()
            await services.mailer.send_bounce(
                ctx.bounce(self.smtp_reply_code, reply.status, self.message, self.sender)
            )
        else:
            outcome = Outcome(detail="no DSN: null sender")  # RFC 3464 §2: never bounce a bounce
        await self.notify(ctx, services)
        return outcome
