"""SES's receipts as values: the Lambda event (`aws:ses`) and the SNS-wrapped `Received`
notification parsed into `Receipt`, and the receipt's verdicts. Pure: no AWS calls.

Shared by the Lambda handler, the guard Lambda and `inbound ses consume`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inbound.actions.base import JsonObject
from inbound.core.errors import InboundError
from inbound.core.verdicts import VERDICT_KINDS, DmarcPolicy, Verdict, Verdicts

SETUP_NOTIFICATION = "AMAZON_SES_SETUP_NOTIFICATION"


class SesEventError(InboundError):
    """The event is not an SES receipt this handler understands."""


@dataclass(frozen=True)
class Receipt:
    """One SES `Received` notification or Lambda event record: `mail`, `receipt`, `content`."""

    mail: JsonObject
    receipt: JsonObject
    content: str | None = None

    @property
    def message_id(self) -> str:
        return _text(self.mail, "messageId", "mail")

    @property
    def action(self) -> JsonObject:
        action = self.receipt.get("action", {})
        return action if isinstance(action, dict) else {}


# -- the event -------------------------------------------------------------------------------


def parse_event(event: object) -> Receipt | None:
    """The receipt in a Lambda event; None for SES's setup notification."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        raise SesEventError("not an SES or SNS event: no Records[0] object")
    record: dict[str, Any] = records[0]
    if record.get("eventSource") == "aws:ses":
        ses = _object(record, "ses", "Records[0]")
        return _receipt(ses, "Records[0].ses")
    if record.get("EventSource") == "aws:sns":
        sns = _object(record, "Sns", "Records[0]")
        text = sns.get("Message")
        if not isinstance(text, str):
            raise SesEventError("Records[0].Sns.Message is not a string")
        try:
            message = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SesEventError(f"Records[0].Sns.Message is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise SesEventError("Records[0].Sns.Message is not a JSON object")
        kind = message.get("notificationType")
        mail = message.get("mail")
        if kind == SETUP_NOTIFICATION or (
            isinstance(mail, dict) and mail.get("messageId") == SETUP_NOTIFICATION
        ):
            return None
        if kind != "Received":
            raise SesEventError(
                f"SNS message has notificationType {kind!r}: only 'Received' notifications "
                "(of SES receipt rules) are handled"
            )
        return _receipt(message, "Records[0].Sns.Message")
    source = record.get("eventSource", record.get("EventSource"))
    raise SesEventError(
        f"unsupported event source {source!r}: expected 'aws:ses' (Lambda action) or "
        "'aws:sns' (Received notification)"
    )


def _receipt(body: dict[str, Any], where: str) -> Receipt:
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise SesEventError(f"{where}.content is not a string")
    found = Receipt(_object(body, "mail", where), _object(body, "receipt", where), content)
    _text(found.mail, "messageId", f"{where}.mail")
    return found


def _object(body: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise SesEventError(f"{where}.{key} is missing or not an object")
    return value


def _text(body: Mapping[str, object], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise SesEventError(f"{where}.{key} is missing or not a string")
    return value


def verdicts_of(receipt: Mapping[str, object]) -> Verdicts:
    """The receipt's verdicts; a missing one keeps the `Verdicts` default."""
    found: dict[str, Any] = {}
    for kind in VERDICT_KINDS:
        entry = receipt.get(f"{kind}Verdict")
        if entry is None:
            continue
        status = entry.get("status") if isinstance(entry, dict) else None
        try:
            found[kind] = Verdict(str(status))
        except ValueError:
            raise SesEventError(
                f"receipt.{kind}Verdict.status {status!r} is not a verdict"
            ) from None
    policy = receipt.get("dmarcPolicy")
    if policy is not None:
        try:
            found["dmarc_policy"] = DmarcPolicy(str(policy).lower())
        except ValueError:
            raise SesEventError(f"receipt.dmarcPolicy {policy!r} is not a DMARC policy") from None
    return Verdicts(**found)
