"""What a rule set asks of SRS (SPEC section 3b): its `srs_domain`s, and the rules that sign.

A rule set whose forward actions name an `srs_domain` receives the bounces of its forwards
there: `srs_domains` is where the receiver accepts SRS addresses without a rule (the compiled
rule set gives them the internal relay rule, `inbound.actions.srs_relay`). `needs_srs` names
the rules that rewrite envelope senders (`via: relay` and a `from_mode` other than `rewrite`),
which `inbound serve` refuses to start without `INBOUND_SRS_SECRETS`.

The forward action's model is read by its fields' names (`srs_domain`, `via`, `from_mode`), so
this module depends on the rule set only. It must do no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

from inbound.actions import ActionModel
from inbound.rules.model import Rule, RuleSet

FORWARD = "forward"
# The name of the internal rule that relays bounces: not a valid YAML rule name (the brackets),
# so no rule of a file can be confused with it.
RELAY_RULE_NAME = "[srs bounces]"


def _forwards(rule_set: RuleSet) -> Iterator[tuple[Rule, ActionModel]]:
    for rule in rule_set.rules:
        for action in rule.actions:
            if action.yaml_type() == FORWARD:
                yield rule, action


def srs_domains(rule_set: RuleSet) -> frozenset[str]:
    """Every `srs_domain` of the rule set's forward actions, lower case, without a final dot
    (a disabled rule's too: the bounces of what it forwarded before may still come back)."""
    found: set[str] = set()
    for _rule, action in _forwards(rule_set):
        domain = getattr(action, "srs_domain", None)
        if isinstance(domain, str) and domain:
            found.add(domain.lower().rstrip("."))
    return frozenset(found)


def needs_srs(rule_set: RuleSet) -> list[str]:
    """The enabled rules with a forward that rewrites the envelope sender with SRS: `via:
    relay` and a `from_mode` other than `rewrite` (SPEC section 3b), in rule-set order."""
    names: list[str] = []
    for rule, action in _forwards(rule_set):
        if not rule.enabled or rule.name in names:
            continue
        if getattr(action, "via", "relay") == "relay" and _from_mode(action) != "rewrite":
            names.append(rule.name)
    return names


def _from_mode(action: ActionModel) -> str:
    mode = getattr(action, "from_mode", None)
    if isinstance(mode, str):
        return mode
    # SPEC section 3b: the default is rewrite with via: ses, else when_dmarc.
    return "rewrite" if getattr(action, "via", "relay") == "ses" else "when_dmarc"
