"""The actions a rule can run: one module each (YAML model, executor, optional SES mapping).

`ACTION_TYPES` is the one list: adding an action is one module and one line here. The YAML
model's union of actions (`action_union`) is derived from it, and `inbound.rules.model`
validates rules with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from inbound.actions.add_header import AddHeaderAction
from inbound.actions.awslambda import LambdaAction
from inbound.actions.base import ActionContext, ActionModel, NoSesMappingError, SesMapping
from inbound.actions.bounce import BounceAction
from inbound.actions.connect import ConnectAction
from inbound.actions.forward import ForwardAction
from inbound.actions.s3 import S3Action
from inbound.actions.sns import SnsAction
from inbound.actions.stop import StopAction
from inbound.actions.webhook import WebhookAction
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
    WebhookAction,
    ForwardAction,
)


def action_union(types: tuple[type[ActionModel], ...]) -> Any:
    """The pydantic discriminated union (on `type:`) of `types`."""
    return Annotated[Union[types], Field(discriminator="type")]  # noqa: UP007 - a runtime tuple


if TYPE_CHECKING:
    Action = ActionModel
else:
    Action = action_union(ACTION_TYPES)

__all__ = [
    "ACTION_TYPES",
    "Action",
    "ActionContext",
    "ActionModel",
    "AddHeaderAction",
    "BounceAction",
    "ConnectAction",
    "ForwardAction",
    "LambdaAction",
    "NoSesMappingError",
    "S3Action",
    "SesMapping",
    "SnsAction",
    "StopAction",
    "WebhookAction",
    "WorkmailAction",
    "action_union",
]
