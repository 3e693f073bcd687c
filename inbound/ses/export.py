"""The rule set as SES receipt rules (pure): export, what SES cannot express, capabilities.

`export_rule_set` gives `{"Rules": [...]}` with each rule as `create-receipt-rule` takes it
(`Enabled` always explicit: the API default is false) and `Filters` when the set has any.
`ses_problems` names every rule (or the whole set) that SES cannot hold, and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from inbound.rules.load import SES_MAX_ACTIONS, SES_MAX_FILTERS, SES_MAX_RECIPIENTS, SES_MAX_RULES
from inbound.rules.model import Conditions, Filter, Rule, RuleSet

# SES names (rules, rule sets, filters): [A-Za-z0-9_.-], start and end alphanumeric, <= 64.
_SES_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")
# Conditions a guard Lambda cannot decide: the SES Lambda event carries no message content.
LOCAL_ONLY_CONDITIONS = ("size", "attachment")

ProblemKind = Literal["extension", "recipient-pattern", "limit", "name"]
Capability = Literal["native", "needs the guard Lambda", "local only"]


@dataclass(frozen=True, order=True)
class Problem:
    """Why SES cannot express a rule (`rule` is None for the rule set as a whole)."""

    rule: str | None
    kind: ProblemKind
    message: str

    def __str__(self) -> str:
        where = f"rule {self.rule!r}" if self.rule is not None else "rule set"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class RuleCapability:
    rule: str
    capability: Capability
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"{self.rule}: {self.capability}{why}"


def export_rule(rule: Rule) -> dict[str, object]:
    """One rule as `create-receipt-rule`'s `Rule` parameter."""
    return {
        "Name": rule.name,
        "Enabled": rule.enabled,
        "TlsPolicy": "Require" if rule.tls_policy == "require" else "Optional",
        "ScanEnabled": rule.scan_enabled,
        "Recipients": list(rule.recipients),
        "Actions": [action.to_ses() for action in rule.actions],
    }


def export_filter(item: Filter) -> dict[str, object]:
    """One IP filter as `create-receipt-filter`'s `Filter` parameter."""
    policy = "Allow" if item.policy == "allow" else "Block"
    return {"Name": item.name, "IpFilter": {"Policy": policy, "Cidr": str(item.cidr)}}


def export_rule_set(rule_set: RuleSet) -> dict[str, object]:
    """`{"Rules": [...]}` (plus `Filters` when there are any), in evaluation order."""
    out: dict[str, object] = {"Rules": [export_rule(rule) for rule in rule_set.rules]}
    if rule_set.filters:
        out["Filters"] = [export_filter(item) for item in rule_set.filters]
    return out


def _is_pattern(recipient: str) -> bool:
    return recipient.startswith("re:") or "*" in recipient or "?" in recipient


def _used(conditions: Conditions | None) -> list[str]:
    return conditions.used() if conditions is not None else []


def _extension_problems(rule: Rule) -> list[Problem]:
    out: list[Problem] = []
    for key, conditions in (("when", rule.when), ("unless", rule.unless)):
        used = _used(conditions)
        if used:
            message = f"uses the extension {key}: {', '.join(used)} (SES has no such conditions)"
            out.append(Problem(rule.name, "extension", message))
    patterns = [r for r in rule.recipients if _is_pattern(r)]
    if patterns:
        shown = ", ".join(repr(p) for p in patterns)
        message = f"recipient patterns {shown}: SES takes only addresses and domains"
        out.append(Problem(rule.name, "recipient-pattern", message))
    return out


def _limit_problems(rule: Rule, *, extra_actions: int = 0) -> list[Problem]:
    out: list[Problem] = []
    actions = len(rule.actions) + extra_actions
    if actions > SES_MAX_ACTIONS:
        guard = " with the guard Lambda" if extra_actions else ""
        message = f"{actions} actions{guard}: SES allows at most {SES_MAX_ACTIONS} per rule"
        out.append(Problem(rule.name, "limit", message))
    if len(rule.recipients) > SES_MAX_RECIPIENTS:
        message = (
            f"{len(rule.recipients)} recipients: SES allows at most {SES_MAX_RECIPIENTS} per rule"
        )
        out.append(Problem(rule.name, "limit", message))
    if not _SES_NAME.fullmatch(rule.name):
        message = (
            f"SES rejects the name {rule.name!r}: use [A-Za-z0-9_.-], start and end with a "
            "letter or digit, at most 64 characters"
        )
        out.append(Problem(rule.name, "name", message))
    return out


def _set_problems(rule_set: RuleSet) -> list[Problem]:
    out: list[Problem] = []
    if len(rule_set.rules) > SES_MAX_RULES:
        message = f"{len(rule_set.rules)} rules: SES allows at most {SES_MAX_RULES} per rule set"
        out.append(Problem(None, "limit", message))
    if len(rule_set.filters) > SES_MAX_FILTERS:
        message = f"{len(rule_set.filters)} filters: SES allows at most {SES_MAX_FILTERS}"
        out.append(Problem(None, "limit", message))
    for name, what in [
        (rule_set.name, "rule set"),
        *((f.name, "filter") for f in rule_set.filters),
    ]:
        if not _SES_NAME.fullmatch(name):
            out.append(Problem(None, "name", f"SES rejects the {what} name {name!r}"))
    return out


def ses_problems(rule_set: RuleSet) -> list[Problem]:
    """Everything SES cannot express as it is: set-wide problems first, then rule by rule."""
    out = _set_problems(rule_set)
    for rule in rule_set.rules:
        out += _extension_problems(rule) + _limit_problems(rule)
    return out


def rule_capability(rule: Rule) -> RuleCapability:
    """ "native", "needs the guard Lambda" (only extensions a guard can decide), or "local only"."""
    extensions = _extension_problems(rule)
    guard = 1 if extensions else 0
    local = [p.message for p in _limit_problems(rule, extra_actions=guard)]
    for key, conditions in (("when", rule.when), ("unless", rule.unless)):
        for name in _used(conditions):
            if name in LOCAL_ONLY_CONDITIONS:
                local.append(f"{key}.{name} needs the message content, which SES gives no guard")
    if local:
        return RuleCapability(rule.name, "local only", tuple(local))
    if extensions:
        return RuleCapability(
            rule.name, "needs the guard Lambda", tuple(p.message for p in extensions)
        )
    return RuleCapability(rule.name, "native", ())


def ses_capabilities(rule_set: RuleSet) -> list[RuleCapability]:
    """Rule by rule, what SES can express (for `inbound check --ses`)."""
    return [rule_capability(rule) for rule in rule_set.rules]
