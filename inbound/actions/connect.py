"""The `connect` action: kept for round trips with SES; recorded, never executed locally."""

from __future__ import annotations

from typing import Literal

from inbound.actions.base import ActionModel, SesMapping
from inbound.config.fields import ConnectArn, IamRoleArn


class ConnectAction(ActionModel):
    # SES does not document this action's notification type; we use its API name.
    receipt_type = "Connect"
    ses = SesMapping("ConnectAction", {"InstanceARN": "instance_arn", "IAMRoleARN": "iam_role_arn"})
    receipt_fields = {"instanceArn": "instance_arn", "iamRoleArn": "iam_role_arn"}
    # It hands the message to Amazon Connect: a delivery, for the in-session bounce decision.
    delivers = True

    type: Literal["connect"]
    instance_arn: ConnectArn
    iam_role_arn: IamRoleArn
