"""The rule set as SES receipt rules (pure): export, what SES cannot express, capabilities.

`export_rule_set` gives `{"Rules": [...]}` with each rule as `create-receipt-rule` takes it
(`Enabled` always explicit: the API default is false) and `Filters` when the set has any.
`ses_problems` names every rule (or the whole set) that SES cannot hold, and why. With a
`Guard`, rules whose `when`/`unless` the guard Lambda can decide get it as their first action
(`--lower-extensions`). What a guard can decide, and why not, is a facet of the condition table
(`inbound.rules.condition_table`); `GUARD_KEYS` and `LOCAL_ONLY_KEYS` are its views. The
functions take another table for a model with more conditions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from types import MappingProxyType
from typing import Literal

from inbound.rules.condition_table import CONDITIONS, ConditionTable, Guarded, LocalOnly
from inbound.rules.load import SES_MAX_ACTIONS, SES_MAX_FILTERS, SES_MAX_RECIPIENTS, SES_MAX_RULES
from inbound.rules.match import address_predicate, is_scanned_pattern
from inbound.rules.model import Conditions, Filter, Rule, RuleSet

# SES names (rules, rule sets, filters): [A-Za-z0-9_.-], start and end alphanumeric, <= 64.
_SES_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?")
RULE_PLACEHOLDER = "{rule}"
# A Lambda function ARN, optionally qualified (version or alias); {rule} may stand in the name
# or the qualifier. Function and alias names take letters, digits, '-' and '_' only.
_LAMBDA_ARN = re.compile(
    r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_{}-]+(?::[A-Za-z0-9_${}-]+)?"
)
_LAMBDA_NAME = re.compile(r"[A-Za-z0-9_-]+")

# Views of the condition table: where the guard Lambda reads each condition it can decide (in
# the SES Lambda event, `Records[0].ses`), and why it cannot decide the others.
GUARD_KEYS: Mapping[str, str] = MappingProxyType(CONDITIONS.guard_keys())
LOCAL_ONLY_KEYS: Mapping[str, str] = MappingProxyType(CONDITIONS.local_only_keys())

ProblemKind = Literal["extension", "recipient-pattern", "limit", "name", "guard", "action"]
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


@dataclass(frozen=True)
class Guard:
    """The guard Lambda of `--lower-extensions ARN`. With `{rule}` in the ARN each guarded rule
    gets its own function or alias (the rule's name in its place); without, one function
    guards every rule and tells them apart by the recipients SES matched."""

    function_arn: str

    @property
    def per_rule(self) -> bool:
        return RULE_PLACEHOLDER in self.function_arn

    def arn_for(self, rule_name: str) -> str:
        return self.function_arn.replace(RULE_PLACEHOLDER, rule_name)

    def action_for(self, rule_name: str) -> dict[str, object]:
        arn = self.arn_for(rule_name)
        return {"LambdaAction": {"FunctionArn": arn, "InvocationType": "RequestResponse"}}


def check_guard_arn(arn: str) -> str | None:
    """Why `arn` cannot be a guard function ARN, or None."""
    if not _LAMBDA_ARN.fullmatch(arn):
        return (
            f"{arn!r} is not a Lambda function ARN "
            "(arn:aws:lambda:REGION:ACCOUNT:function:NAME[:ALIAS])"
        )
    if "{" in arn.replace(RULE_PLACEHOLDER, "") or "}" in arn.replace(RULE_PLACEHOLDER, ""):
        return f"{arn!r}: the only placeholder is {RULE_PLACEHOLDER}"
    return None


def guarded(rule: Rule) -> bool:
    """The rule has `when`/`unless` conditions: exported with a guard, or not at all."""
    return bool(_used(rule.when) or _used(rule.unless))


def export_rule(rule: Rule, guard: Guard | None = None) -> dict[str, object]:
    """One rule as `create-receipt-rule`'s `Rule` parameter (the guard first when given and
    the rule has conditions)."""
    actions = [action.to_ses() for action in rule.actions]
    if guard is not None and guarded(rule):
        actions.insert(0, guard.action_for(rule.name))
    return {
        "Name": rule.name,
        "Enabled": rule.enabled,
        "TlsPolicy": "Require" if rule.tls_policy == "require" else "Optional",
        "ScanEnabled": rule.scan_enabled,
        "Recipients": list(rule.recipients),
        "Actions": actions,
    }


def export_filter(item: Filter) -> dict[str, object]:
    """One IP filter as `create-receipt-filter`'s `Filter` parameter."""
    policy = "Allow" if item.policy == "allow" else "Block"
    return {"Name": item.name, "IpFilter": {"Policy": policy, "Cidr": str(item.cidr)}}


def export_rule_set(rule_set: RuleSet, guard: Guard | None = None) -> dict[str, object]:
    """`{"Rules": [...]}` (plus `Filters` when there are any), in evaluation order."""
    out: dict[str, object] = {"Rules": [export_rule(rule, guard) for rule in rule_set.rules]}
    if rule_set.filters:
        out["Filters"] = [export_filter(item) for item in rule_set.filters]
    return out


def ses_matches(recipients: list[str], address: str) -> bool:
    """Whether SES's `Recipients` (addresses, domains, .subdomains; empty: all) match."""
    return not recipients or any(address_predicate(p)(address) for p in recipients)


def _used(conditions: Conditions | None) -> list[str]:
    return conditions.used() if conditions is not None else []


def _keys(rule: Rule) -> list[tuple[str, str]]:
    return [
        (k, name) for k, c in (("when", rule.when), ("unless", rule.unless)) for name in _used(c)
    ]


def _local_only(rule: Rule, conditions: ConditionTable) -> list[str]:
    return [
        f"{key}: {name}: {ses.reason}"
        for key, name in _keys(rule)
        if isinstance(ses := conditions.row(name).ses, LocalOnly)
    ]


def _guard_reads(rule: Rule, conditions: ConditionTable) -> list[str]:
    return [
        f"{key}: {name} (read from {ses.where})"
        for key, name in _keys(rule)
        if isinstance(ses := conditions.row(name).ses, Guarded)
    ]


def _pattern_problems(rule: Rule) -> list[Problem]:
    patterns = [r for r in rule.recipients if is_scanned_pattern(r)]
    if not patterns:
        return []
    shown = ", ".join(f"'{p}'" for p in patterns)  # as written: repr() doubles backslashes
    message = (
        f"recipient patterns {shown}: SES takes only addresses and domains, and a guard "
        "cannot narrow the recipients SES matched"
    )
    return [Problem(rule.name, "recipient-pattern", message)]


def _extension_problems(
    rule: Rule, guard: Guard | None, conditions: ConditionTable
) -> list[Problem]:
    if guard is None:
        out: list[Problem] = []
        for key, given in (("when", rule.when), ("unless", rule.unless)):
            used = _used(given)
            if used:
                message = f"uses the extension {key}: {', '.join(used)} (SES has no such conditions"
                if not _local_only(rule, conditions):
                    message += "; --lower-extensions GUARD_FUNCTION_ARN hands them to a guard"
                out.append(Problem(rule.name, "extension", message + ")"))
        return out
    return [
        Problem(rule.name, "extension", f"the guard Lambda cannot decide {why}")
        for why in _local_only(rule, conditions)
    ]


def _action_problems(rule: Rule) -> list[Problem]:
    """Actions SES does not have (no `SesMapping`): they run only where inbound runs them."""
    return [
        Problem(
            rule.name,
            "action",
            f"action {i + 1} ({action.yaml_type()}) has no SES equivalent: it runs only in "
            "`inbound serve` or in the inbound Lambda handler (inbound.ses.handler), not in SES",
        )
        for i, action in enumerate(rule.actions)
        if action.ses is None
    ]


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


def _witness(pattern: str) -> str:
    """An address `pattern` matches (an address, a domain or a .subdomain form)."""
    if "@" in pattern:
        return pattern
    if pattern.startswith("."):
        return f"w@w{pattern}"
    return f"w@{pattern}"


def recipients_overlap(a: list[str], b: list[str]) -> bool:
    """Whether one address can match both SES recipient lists."""
    if not a or not b:
        return True
    return any(ses_matches(b, _witness(p)) for p in a) or any(
        ses_matches(a, _witness(p)) for p in b
    )


def guard_collisions(
    rule_set: RuleSet, conditions: ConditionTable = CONDITIONS
) -> list[tuple[Rule, Rule]]:
    """Pairs of lowerable rules a shared guard cannot tell apart: recipients that overlap
    (SES gives the guard only the recipients it matched) and different conditions."""
    rules = [r for r in rule_set.rules if guarded(r) and not _local_only(r, conditions)]
    rules = [r for r in rules if not _pattern_problems(r)]
    return [
        (a, b)
        for a, b in combinations(rules, 2)
        if (a.when, a.unless) != (b.when, b.unless)
        and recipients_overlap(a.recipients, b.recipients)
    ]


def _guard_problems(rule_set: RuleSet, guard: Guard, conditions: ConditionTable) -> list[Problem]:
    out: list[Problem] = []
    if guard.per_rule:
        for rule in rule_set.rules:
            if guarded(rule) and not _LAMBDA_NAME.fullmatch(rule.name):
                message = (
                    f"the name {rule.name!r} cannot stand for {RULE_PLACEHOLDER} in the guard "
                    "ARN: Lambda function and alias names take only letters, digits, '-', '_'"
                )
                out.append(Problem(rule.name, "guard", message))
        return out
    for a, b in guard_collisions(rule_set, conditions):
        message = (
            f"rules {a.name!r} and {b.name!r} have different conditions for recipients that "
            "overlap, and one guard function cannot tell which of them SES invoked it for: "
            f"put {RULE_PLACEHOLDER} in the guard ARN (a function or alias per rule), or give "
            "them recipients that do not overlap"
        )
        out.append(Problem(b.name, "guard", message))
    return out


def ses_problems(
    rule_set: RuleSet, guard: Guard | None = None, conditions: ConditionTable = CONDITIONS
) -> list[Problem]:
    """Everything SES cannot express as it is (with `guard`: lowered to the guard Lambda):
    set-wide problems first, then rule by rule."""
    out = _set_problems(rule_set)
    for rule in rule_set.rules:
        extra = 1 if guard is not None and guarded(rule) else 0
        out += _extension_problems(rule, guard, conditions) + _pattern_problems(rule)
        out += _action_problems(rule)
        out += _limit_problems(rule, extra_actions=extra)
    if guard is not None:
        out += _guard_problems(rule_set, guard, conditions)
    return out


def rule_capability(rule: Rule, conditions: ConditionTable = CONDITIONS) -> RuleCapability:
    """ "native", "needs the guard Lambda" (only conditions a guard can decide), or "local only"."""
    needs_guard = guarded(rule)
    local = [p.message for p in _limit_problems(rule, extra_actions=int(needs_guard))]
    local += [p.message for p in _pattern_problems(rule) + _action_problems(rule)]
    local += [f"{why}, so no guard can decide it" for why in _local_only(rule, conditions)]
    if local:
        return RuleCapability(rule.name, "local only", tuple(local))
    if needs_guard:
        reasons = tuple(_guard_reads(rule, conditions))
        return RuleCapability(rule.name, "needs the guard Lambda", reasons)
    return RuleCapability(rule.name, "native", ())


def ses_capabilities(
    rule_set: RuleSet, conditions: ConditionTable = CONDITIONS
) -> list[RuleCapability]:
    """Rule by rule, what SES can express (for `inbound check --ses`)."""
    return [rule_capability(rule, conditions) for rule in rule_set.rules]
