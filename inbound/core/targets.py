"""Where actions go: the `Targets` protocol, implemented by the local and the AWS target sets.

Targets move bytes and JSON; they know nothing of rules. Failures are `TransientActionError`
or `PermanentActionError`, decided by each target from its own error codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BounceRequest:
    """A delivery status notification to send for a message accepted earlier."""

    message_id: str
    # From: the bounce action's sender; To: the envelope sender (never <>).
    sender: str
    to: str
    recipients: tuple[str, ...]
    smtp_reply_code: str
    status_code: str
    diagnostic: str
    reporting_mta: str
    # The message's header block, for the text/rfc822-headers part (RFC 3462).
    original_headers: bytes
    # When the message was received (the DSN's Arrival-Date).
    arrival: datetime | None = None


class Targets(Protocol):
    async def store(
        self,
        bucket: str,
        key: str,
        content: bytes,
        *,
        kms_key_arn: str | None,
        iam_role_arn: str | None,
    ) -> None:
        """Put `content` at `key` in `bucket` (overwriting: keys are deterministic)."""

    async def publish(self, topic_arn: str, notification: dict[str, object]) -> None:
        """Publish one SES notification to a topic."""

    async def invoke(
        self, function_arn: str, event: dict[str, object], *, wait: bool
    ) -> object | None:
        """Invoke a function with the SES Lambda event; with `wait`, return what it returned."""

    async def send_bounce(self, bounce: BounceRequest) -> None:
        """Send a DSN (RFC 3464) to `bounce.to`."""
