"""A rule set prepared for evaluation: recipient index, filters and conditions compiled once,
and the internal rule that relays the bounces of forwards (SPEC section 3b, SRS).

`CompiledRuleSet` is immutable and shared; a reload builds a new one, and a message keeps the
one it was received with (SPEC section 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from inbound.actions import ActionModel
from inbound.actions.srs_relay import SrsRelayAction
from inbound.core.message import Reads
from inbound.rules.condition_table import CONDITIONS, ConditionTable
from inbound.rules.conditions import Check
from inbound.rules.match import RecipientIndex
from inbound.rules.model import Rule, RuleSet
from inbound.rules.srs_relay import RELAY_RULE_NAME, srs_domains


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
    # What its conditions read (the condition table's facet): how much of a message to read.
    reads: frozenset[Reads] = frozenset()


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
    # The forwards' `srs_domain`s, where SRS addresses are accepted without a rule; their
    # messages go to the internal rule at `srs_rule` (the last, after the file's rules).
    srs_domains: frozenset[str] = frozenset()
    srs_rule: int | None = None

    @classmethod
    def build(cls, rule_set: RuleSet, conditions: ConditionTable = CONDITIONS) -> CompiledRuleSet:
        """`conditions`: the table compiling `when`/`unless` (another one for a model with more
        condition fields)."""
        rules = tuple(_compile_rule(i, rule, conditions) for i, rule in enumerate(rule_set.rules))
        filters = tuple(
            CompiledFilter(f.name, f.policy == "allow", ip_network(f.cidr, strict=False))
            for f in rule_set.filters
        )
        index = RecipientIndex.build([(r.index, r.model.recipients) for r in rules if r.enabled])
        relay_domains = srs_domains(rule_set)
        relay_at = None
        if relay_domains:
            # Last, so the file's rules keep their positions (and the ledgers' step keys).
            relay_at = len(rules)
            rules = (*rules, _srs_relay_rule(relay_at, relay_domains))
        return cls(
            rule_set.name,
            frozenset(rule_set.domains),
            rules,
            filters,
            index,
            rule_set,
            relay_domains,
            relay_at,
        )


def _compile_rule(index: int, rule: Rule, conditions: ConditionTable) -> CompiledRule:
    keys = [key for c in (rule.when, rule.unless) if c is not None for key in c.used()]
    return CompiledRule(
        index=index,
        name=rule.name,
        enabled=rule.enabled,
        require_tls=rule.tls_policy == "require",
        scan_enabled=rule.scan_enabled,
        when=conditions.compile(rule.when),
        unless=conditions.compile(rule.unless),
        actions=tuple(rule.actions),
        model=rule,
        reads=conditions.reads(keys),
    )


def _srs_relay_rule(index: int, domains: frozenset[str]) -> CompiledRule:
    """The internal rule of SRS recipients (`inbound.actions.srs_relay`): no conditions, no
    scans; its recipients are matched by `rules.decide`, not by the index."""
    action = SrsRelayAction()
    model = Rule.model_construct(name=RELAY_RULE_NAME, recipients=sorted(domains), actions=[action])
    return CompiledRule(
        index=index,
        name=RELAY_RULE_NAME,
        enabled=True,
        require_tls=False,
        scan_enabled=False,
        when=(),
        unless=(),
        actions=(action,),
        model=model,
    )
