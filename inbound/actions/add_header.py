"""The `add_header` action: later actions see the message with this header on top."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionContext, ActionModel, SesMapping
from inbound.config.fields import HeaderName, HeaderValue
from inbound.core.services import Services
from inbound.core.steps import Outcome
from inbound.message.headers import add_header


class AddHeaderAction(ActionModel):
    receipt_type = "AddHeader"
    pure = True
    ses = SesMapping("AddHeaderAction", {"HeaderName": "name", "HeaderValue": "value"})
    receipt_fields = {"headerName": "name", "headerValue": "value"}

    type: Literal["add_header"]
    name: HeaderName
    value: HeaderValue

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        return Outcome(content=add_header(ctx.content, self.name, self.value))
