"""The `s3` action: store the message at `prefix + messageId` (SES S3Action)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

from inbound.actions.base import ActionContext, ActionModel, SesMapping
from inbound.config.fields import IamRoleArn, KmsKeyArn, TopicArn
from inbound.core.services import Services
from inbound.core.steps import CONTINUE, Outcome

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _check_bucket(value: str) -> str:
    # S3 bucket naming rules; they also keep the local target's path inside DATA_DIR/s3.
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a valid bucket name: 3-63 of lowercase letters, digits, '.', '-'"
        )
    return value


def _check_prefix(value: str) -> str:
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"prefix {value!r} must not contain '..'")
    if len(value) > 1024 or any(ord(c) < 32 for c in value):
        raise ValueError(f"prefix {value!r} is not a valid S3 key prefix")
    return value


# A valid S3 bucket name (the webhook action's `attachments_bucket` too).
BucketName = Annotated[str, AfterValidator(_check_bucket)]


class S3Action(ActionModel):
    receipt_type = "S3"
    ses = SesMapping(
        "S3Action",
        {
            "BucketName": "bucket",
            "ObjectKeyPrefix": "prefix",
            "KmsKeyArn": "kms_key_arn",
            "TopicArn": "topic_arn",
            "IamRoleArn": "iam_role_arn",
        },
    )
    receipt_fields = {"topicArn": "topic_arn", "bucketName": "bucket", "objectKeyPrefix": "prefix"}
    delivers = True

    type: Literal["s3"]
    bucket: BucketName
    prefix: Annotated[str, AfterValidator(_check_prefix)] = ""
    kms_key_arn: KmsKeyArn | None = None
    iam_role_arn: IamRoleArn | None = None
    topic_arn: TopicArn | None = None

    def object_key(self, message_id: str) -> str:
        # SES inserts a '/' after a non-empty prefix that does not end in one.
        if self.prefix and not self.prefix.endswith("/"):
            return f"{self.prefix}/{message_id}"
        return f"{self.prefix}{message_id}"

    def receipt_action(self, message_id: str) -> dict[str, object]:
        out = super().receipt_action(message_id)
        out["objectKey"] = self.object_key(message_id)
        return out

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        await services.blobs.store(
            self.bucket,
            self.object_key(ctx.message_id),
            ctx.content,
            kms_key_arn=self.kms_key_arn,
            iam_role_arn=self.iam_role_arn,
        )
        await self.notify(ctx, services)
        return CONTINUE
