"""What an executing action sees of its message: the one builder of `ActionContext`.

`inbound serve`'s dispatcher, the SES Lambda handler (and `ses consume`) and the tests all
describe a message as a `RunSubject` and get each action's context from `action_context`, so
the notifications, Lambda events and DSN requests they produce are built one way. Where the
entry points differ is data, not code: the SES side passes SES's own `mail` object and the
receipt's timestamps; the spool side its host name and the time since receipt.

This module builds values only; it must not run actions, touch a service or read a ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from inbound.actions.base import ActionContext, JsonObject
from inbound.core.message import MimeLimits
from inbound.core.services import BounceRequest
from inbound.core.steps import StepKey
from inbound.core.verdicts import DmarcPolicy, Verdicts
from inbound.message.notification import (
    lambda_event,
    mail_object,
    receipt_object,
    received_notification,
)

# SES publishes at most 150 KB through an SNS action (SNSAction).
SNS_MAX_BYTES = 150 * 1024


@dataclass(frozen=True)
class RunSubject:
    """One message as its actions know it, whatever the entry point."""

    message_id: str
    mail_from: str
    # The message as the first action sees it (prepended headers included).
    base: bytes
    # `mail.timestamp`, and the DSN's Arrival-Date.
    received_at: datetime
    # Milliseconds from receipt to this action, for `receipt.processingTimeMillis`.
    processing_ms: Callable[[], int]
    # `receipt.timestamp` (None: `received_at`).
    receipt_at: datetime | None = None
    # The DSN's Reporting-MTA and the default bounce sender's domain (None: the domain of
    # the bounce action's sender, as the SES side has no host name of its own).
    hostname: str | None = None
    # SES's own `mail` object, used while the content is SES's bytes unchanged.
    ses_mail: JsonObject | None = None
    sns_max_bytes: int = SNS_MAX_BYTES
    sns_oversize: str = "bounce"
    # The DMARC policy the From domain publishes, as measured at receipt (None: unknown).
    dmarc_published: DmarcPolicy | None = None
    mime_limits: MimeLimits = field(default_factory=MimeLimits)
    headers: bytes = field(init=False)
    # The `mail` object of each content the actions saw (by identity: add_header makes a new
    # one), so a message with several notifying actions has its header block parsed once.
    _mails: dict[int, tuple[bytes, JsonObject]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        end = self.base.find(b"\r\n\r\n")
        object.__setattr__(self, "headers", self.base[: end + 2] if end >= 0 else self.base)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists and scalars), much cheaper than `deepcopy`."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def action_context(
    subject: RunSubject,
    content: bytes,
    recipients: tuple[str, ...],
    verdicts: Verdicts,
    *,
    rule: str = "",
    step: StepKey | None = None,
    patterns: Sequence[str] = (),
) -> ActionContext:
    """The context of one action: `content` as earlier actions left it, the rule's
    `recipients` (and the `patterns` they matched), the verdicts evaluation decided with, and
    the step (`rule` name, key)."""

    def mail() -> JsonObject:
        if subject.ses_mail is not None and content is subject.base:
            return dict(subject.ses_mail)  # SES's own object for SES's bytes
        cached = subject._mails.get(id(content))
        if cached is None or cached[0] is not content:
            made = mail_object(
                message_id=subject.message_id,
                timestamp=subject.received_at,
                source=subject.mail_from,
                raw=content,
            )
            cached = subject._mails[id(content)] = (content, made)
        # A copy: a function given the event (--lambda) may change it.
        copied: JsonObject = _copy(cached[1])
        return copied

    def receipt(action: JsonObject) -> JsonObject:
        return receipt_object(
            timestamp=subject.receipt_at or subject.received_at,
            processing_ms=max(subject.processing_ms(), 0),
            recipients=list(recipients),
            verdicts=verdicts,
            action=action,
        )

    def bounce(code: str, status: str, diagnostic: str, sender: str) -> BounceRequest:
        mta = subject.hostname or sender.rpartition("@")[2] or "localhost"
        return BounceRequest(
            message_id=subject.message_id,
            sender=sender or f"MAILER-DAEMON@{mta}",
            to=subject.mail_from,
            recipients=recipients,
            smtp_reply_code=code,
            status_code=status,
            diagnostic=diagnostic,
            reporting_mta=mta,
            original_headers=subject.headers,
            arrival=subject.received_at,
        )

    return ActionContext(
        message_id=subject.message_id,
        content=content,
        mail_from=subject.mail_from,
        received_at=subject.received_at,
        recipients=recipients,
        notification=lambda action: received_notification(mail(), receipt(action)),
        lambda_event=lambda action: lambda_event(mail(), receipt(action)),
        bounce=bounce,
        sns_max_bytes=subject.sns_max_bytes,
        sns_oversize=subject.sns_oversize,
        rule=rule,
        step=step if step is not None else StepKey(0, 0),
        verdicts=verdicts,
        dmarc_published=subject.dmarc_published,
        mime_limits=subject.mime_limits,
        hostname=subject.hostname,
        patterns=tuple(patterns),
    )
