"""The `add_header` action: later actions see the message with this header on top."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionModel
from inbound.config.fields import HeaderName, HeaderValue


class AddHeaderAction(ActionModel):
    ses_key = "AddHeaderAction"
    receipt_type = "AddHeader"
    ses_fields = {"HeaderName": "name", "HeaderValue": "value"}
    receipt_fields = {"headerName": "name", "headerValue": "value"}

    type: Literal["add_header"]
    name: HeaderName
    value: HeaderValue
