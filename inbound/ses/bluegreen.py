"""`inbound ses apply --blue-green`: build the YAML in a new rule set, then switch to it.

SES evaluates each message against the active set as it is at that moment, so changing the
active set rule by rule lets mail meet a half-applied set. Blue-green never touches the active
set: it clones it to `BASE-YYYYMMDDTHHMMSSZ` (UTC; BASE is `--rule-set` or the YAML's name),
makes the clone equal to the YAML, and activates the clone with one call. With no active set,
the new set is created empty first.

**Clean-up** (decision). SES keeps at most 40 rule sets per region, so every apply would use one
up. After the switch, inactive sets named `BASE-<timestamp>` are deleted except the `keep`
newest (default 1: the set just replaced, when it was a clone, stays for a rollback with
`aws ses set-active-receipt-rule-set`). Sets with any other name are never deleted.

IP filters belong to the account, not to a rule set: changed filters take effect when they are
made, just before the switch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from inbound.rules.model import RuleSet
from inbound.ses.export import Guard
from inbound.ses.live import Change, Throttled, describe, list_filters, live_rule_set, plan_changes

MAX_NAME = 64  # SES rule set names
_SUFFIX = len("-YYYYMMDDTHHMMSSZ")


def _stem(base: str) -> str:
    """What of `base` fits before the suffix (SES names end with a letter or digit)."""
    return base[: MAX_NAME - _SUFFIX].rstrip("-_.")


def clone_name(base: str, now: datetime) -> str:
    """`BASE-YYYYMMDDTHHMMSSZ`, BASE shortened to fit SES's 64 characters."""
    return f"{_stem(base)}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def is_clone_of(base: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(_stem(base))}-\d{{8}}T\d{{6}}Z", name) is not None


@dataclass(frozen=True)
class BlueGreenPlan:
    """The calls that build and activate `new` (empty: the active set already equals the YAML)."""

    new: str
    active: str | None
    changes: list[Change]


def plan_blue_green(
    ses: Throttled,
    desired: RuleSet,
    base: str | None = None,
    *,
    guard: Guard | None = None,
    now: datetime | None = None,
) -> BlueGreenPlan:
    """Read the active set and plan its clone's changes up to the switch."""
    new = clone_name(base or desired.name, now or datetime.now(UTC))
    described = describe(ses, None)
    live_filters = list_filters(ses) if desired.filters else None
    if described is None:
        changes = plan_changes(
            desired, None, rule_set_name=new, active=None, live_filters=live_filters, guard=guard
        )
        return BlueGreenPlan(new, None, changes)
    active = str(described["Metadata"]["Name"])
    live = live_rule_set(described, domains=list(desired.domains))
    # Planned as if the clone were active already: the switch is added last, on its own.
    changes = plan_changes(
        desired, live, rule_set_name=new, active=new, live_filters=live_filters, guard=guard
    )
    if not changes:
        return BlueGreenPlan(new, active, [])
    clone = Change(
        f"clone rule set {active} to {new}",
        "clone_receipt_rule_set",
        {"RuleSetName": new, "OriginalRuleSetName": active},
    )
    switch = Change(
        f"activate rule set {new} (was {active})",
        "set_active_receipt_rule_set",
        {"RuleSetName": new},
    )
    return BlueGreenPlan(new, active, [clone, *changes, switch])


def rule_set_names(ses: Throttled) -> list[str]:
    names: list[str] = []
    token: str | None = None
    while True:
        page = ses.call("list_receipt_rule_sets", **({"NextToken": token} if token else {}))
        names += [str(s["Name"]) for s in page.get("RuleSets", [])]
        token = page.get("NextToken")
        if not token:
            return names


def retired(names: list[str], base: str, *, active: str, keep: int) -> list[str]:
    """The inactive clones of `base` to delete: all but the `keep` newest."""
    clones = sorted(n for n in names if n != active and is_clone_of(base, n))
    return clones[: max(len(clones) - keep, 0)]


def cleanup_changes(ses: Throttled, base: str, *, active: str, keep: int) -> list[Change]:
    """After the switch: delete the older inactive clones (see the module docstring)."""
    return [
        Change(f"delete rule set {name}", "delete_receipt_rule_set", {"RuleSetName": name})
        for name in retired(rule_set_names(ses), base, active=active, keep=keep)
    ]
