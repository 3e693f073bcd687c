"""A forward rule for the SRS tests that run a receiver in this process.

The SRS side reads only a forward's `srs_domain`, `via` and `from_mode`
(`inbound.rules.srs_relay`). Until the `forward` action is in `ACTION_TYPES`, `forward_stand_in`
registers a model with just those fields (and `to`), which forwards nothing; once it is, the
fixture registers nothing and the rules below are the real action's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal

import pytest

from inbound.actions import ACTION_TYPES, ActionModel
from inbound.rules.model import use_actions

FORWARD_RULES = """\
version: 1
name: forwarding
domains: [example.com]
rules:
  - name: forward-team
    recipients: [team@example.com]
    actions:
      - type: forward
        to: [ops@dest.example]
        via: relay
        from_mode: preserve
        srs_domain: fwd.example.net
"""


class ForwardStandIn(ActionModel):
    """The fields of SPEC 3b's forward that the SRS side reads; it forwards nothing."""

    receipt_type = "Forward"
    receipt_fields: ClassVar[dict[str, str]] = {}
    delivers = True

    type: Literal["forward"]
    to: list[str]
    via: Literal["relay", "ses"] = "relay"
    from_mode: Literal["rewrite", "when_dmarc", "preserve"] | None = None
    from_address: str | None = None
    srs_domain: str | None = None


@pytest.fixture
def forward_stand_in() -> Iterator[None]:
    if any(action.yaml_type() == "forward" for action in ACTION_TYPES):
        yield
        return
    previous = use_actions((*ACTION_TYPES, ForwardStandIn))
    yield
    use_actions(previous)
