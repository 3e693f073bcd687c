"""A rule set prepared for evaluation: recipient index, filters and conditions compiled once.

`CompiledRuleSet` is immutable and shared; a reload builds a new one, and a message keeps the
one it was received with (SPEC section 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from inbound.actions import ActionModel
from inbound.rules.conditions import Check, compile_conditions
from inbound.rules.match import RecipientIndex
from inbound.rules.model import Rule, RuleSet


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    name: str
    enabled: bool
    require_tls: bool
    scan_enabled: bool
    when: tuple[Check, ...]
    unless: tuple[Check, ...]
    actions: tuple[ActionModel, ...]
    model: Rule
    # Condition keys that look inside the message ("from", "subject", "header ...", ...).
    message_keys: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    name: str
    allow: bool
    network: IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class CompiledRuleSet:
    name: str
    domains: frozenset[str]
    rules: tuple[CompiledRule, ...]
    filters: tuple[CompiledFilter, ...]
    # Indexes only the enabled rules: disabled ones neither accept mail nor run.
    index: RecipientIndex
    model: RuleSet

    @classmethod
    def build(cls, rule_set: RuleSet) -> CompiledRuleSet:
        rules = tuple(_compile_rule(i, rule) for i, rule in enumerate(rule_set.rules))
        filters = tuple(
            CompiledFilter(f.name, f.policy == "allow", ip_network(f.cidr, strict=False))
            for f in rule_set.filters
        )
        index = RecipientIndex.build([(r.index, r.model.recipients) for r in rules if r.enabled])
        return cls(rule_set.name, frozenset(rule_set.domains), rules, filters, index, rule_set)


def _compile_rule(index: int, rule: Rule) -> CompiledRule:
    return CompiledRule(
        index=index,
        name=rule.name,
        enabled=rule.enabled,
        require_tls=rule.tls_policy == "require",
        scan_enabled=rule.scan_enabled,
        when=compile_conditions(rule.when) if rule.when else (),
        unless=compile_conditions(rule.unless) if rule.unless else (),
        actions=tuple(rule.actions),
        model=rule,
        message_keys=frozenset(
            key
            for conditions in (rule.when, rule.unless)
            if conditions is not None
            for key in conditions.used()
            if key in _MESSAGE_KEYS
        ),
    )


# Conditions answered from the message itself; the rest come from the session and verdicts.
_MESSAGE_KEYS = frozenset({"from", "subject", "header", "attachment"})
