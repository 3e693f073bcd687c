"""The `workmail` action: kept for round trips with SES; recorded, never executed locally."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionModel, SesMapping
from inbound.config.fields import TopicArn, WorkmailArn


class WorkmailAction(ActionModel):
    receipt_type = "WorkMail"
    ses = SesMapping(
        "WorkmailAction", {"OrganizationArn": "organization_arn", "TopicArn": "topic_arn"}
    )
    receipt_fields = {"topicArn": "topic_arn", "organizationArn": "organization_arn"}
    delivers = True

    type: Literal["workmail"]
    organization_arn: WorkmailArn
    topic_arn: TopicArn | None = None
