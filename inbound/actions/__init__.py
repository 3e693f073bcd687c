"""The actions a rule can run: one module each (YAML model, SES mapping, later its executor).

`ACTION_TYPES` is the explicit list; adding an action is one module and one line here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from inbound.actions.add_header import AddHeaderAction
from inbound.actions.awslambda import LambdaAction
from inbound.actions.base import ActionModel
from inbound.actions.bounce import BounceAction
from inbound.actions.connect import ConnectAction
from inbound.actions.s3 import S3Action
from inbound.actions.sns import SnsAction
from inbound.actions.stop import StopAction
from inbound.actions.workmail import WorkmailAction

ACTION_TYPES: tuple[type[ActionModel], ...] = (
    S3Action,
    LambdaAction,
    SnsAction,
    BounceAction,
    AddHeaderAction,
    StopAction,
    WorkmailAction,
    ConnectAction,
)

Action = Annotated[
    S3Action
    | LambdaAction
    | SnsAction
    | BounceAction
    | AddHeaderAction
    | StopAction
    | WorkmailAction
    | ConnectAction,
    Field(discriminator="type"),
]

__all__ = [
    "ACTION_TYPES",
    "Action",
    "ActionModel",
    "AddHeaderAction",
    "BounceAction",
    "ConnectAction",
    "LambdaAction",
    "S3Action",
    "SnsAction",
    "StopAction",
    "WorkmailAction",
]
