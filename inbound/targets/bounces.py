"""Bounce DSNs through the outbound relay, for either target set (`--relay HOST:PORT`).

`WithRelay` wraps a target set: S3, SNS and Lambda go where they went, and `send_bounce` builds
the RFC 3464 report and hands it to the relay. Without a relay, the target set's own
`send_bounce` applies (the local one records the request; the AWS one refuses).
"""

from __future__ import annotations

from datetime import UTC, datetime

from inbound.core.ids import MessageIdGenerator
from inbound.core.targets import BounceRequest, Targets
from inbound.message.dsn import build_dsn
from inbound.targets.relay import RelaySender


class WithRelay:
    def __init__(self, targets: Targets, relay: RelaySender) -> None:
        self.targets = targets
        self.relay = relay
        self._ids = MessageIdGenerator()

    async def store(
        self,
        bucket: str,
        key: str,
        content: bytes,
        *,
        kms_key_arn: str | None,
        iam_role_arn: str | None,
    ) -> None:
        await self.targets.store(
            bucket, key, content, kms_key_arn=kms_key_arn, iam_role_arn=iam_role_arn
        )

    async def publish(self, topic_arn: str, notification: dict[str, object]) -> None:
        await self.targets.publish(topic_arn, notification)

    async def invoke(
        self, function_arn: str, event: dict[str, object], *, wait: bool
    ) -> object | None:
        return await self.targets.invoke(function_arn, event, wait=wait)

    async def send_bounce(self, bounce: BounceRequest) -> None:
        now = datetime.now(UTC)
        dsn = build_dsn(bounce, arrival=bounce.arrival or now, now=now, dsn_id=self._ids.next())
        await self.relay.send(bounce, dsn)
