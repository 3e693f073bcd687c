"""What a rule set asks of SRS (SPEC section 3b): its `srs_domain`s, and the rules that sign.

A rule set whose forward actions name an `srs_domain` receives the bounces of its forwards
there: `srs_domains` is where the receiver accepts SRS addresses without a rule (the compiled
rule set gives them the internal relay rule, `inbound.actions.srs_relay`). `needs_srs` names
the rules that rewrite envelope senders (`via: relay` and a `from_mode` other than `rewrite`),
which `inbound serve` refuses to start without `INBOUND_SRS_SECRETS` (`srs_keys_for`).

It reads the forward actions' `srs_domain`, `via` and `from_mode` (defaults applied); it must
do no I/O (the environment is given).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from inbound.actions.forward import ForwardAction
from inbound.core.errors import InputError
from inbound.rules.model import Rule, RuleSet
from inbound.srs import SECRETS_ENV, SrsKeys

# The name of the internal rule that relays bounces: not a valid YAML rule name (the brackets),
# so no rule of a file can be confused with it.
RELAY_RULE_NAME = "[srs bounces]"


def _forwards(rule_set: RuleSet) -> Iterator[tuple[Rule, ForwardAction]]:
    for rule in rule_set.rules:
        for action in rule.actions:
            if isinstance(action, ForwardAction):
                yield rule, action


def srs_domains(rule_set: RuleSet) -> frozenset[str]:
    """Every `srs_domain` of the rule set's forward actions, lower case, without a final dot
    (a disabled rule's too: the bounces of what it forwarded before may still come back)."""
    found: set[str] = set()
    for _rule, action in _forwards(rule_set):
        if action.srs_domain:
            found.add(action.srs_domain.lower().rstrip("."))
    return frozenset(found)


def needs_srs(rule_set: RuleSet) -> list[str]:
    """The enabled rules with a forward that rewrites the envelope sender with SRS: `via:
    relay` and a `from_mode` other than `rewrite` (SPEC section 3b), in rule-set order."""
    names: list[str] = []
    for rule, action in _forwards(rule_set):
        if not rule.enabled or rule.name in names:
            continue
        if action.via == "relay" and action.mode != "rewrite":
            names.append(rule.name)
    return names


def srs_keys_for(rules: RuleSet, environ: Mapping[str, str]) -> SrsKeys | None:
    """The SRS keys of `INBOUND_SRS_SECRETS` in `environ`; an `InputError` naming the first
    rule that rewrites envelope senders with SRS when the variable is unset."""
    keys = SrsKeys.from_env(environ)
    needing = needs_srs(rules)
    if keys is None and needing:
        raise InputError(
            f"rule {needing[0]!r} forwards with SRS (via: relay, from_mode not rewrite) and "
            f"{SECRETS_ENV} is not set: set it to one or more secrets, comma separated"
        )
    return keys
