"""The pure parts of the decision for one message (SPEC section 2): receipt filters, each
recipient's RCPT TO answer (an SRS address included), the verdicts SES would report, and why a
rule does not apply.

`inbound.rules.evaluate` puts them together, step by step; the receiver asks some of them on
their own during the session (filters at connect, recipients at RCPT TO). This module must do
no I/O, read no clock (`check_srs` is given the time) and know no action.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from inbound.core import reply as replies
from inbound.core.envelope import Connection
from inbound.core.message import MessageFacts, Reads
from inbound.core.plan import ConnectionDecision, RecipientDecision
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.conditions import Check, Facts, failing, holding
from inbound.rules.match import split_address, within_domains
from inbound.srs import SrsError, SrsKeys, is_srs, srs_reverse


def check_connection(rules: CompiledRuleSet, connection: Connection) -> ConnectionDecision:
    """Receipt filters: an `allow` match wins over any `block` match (SPEC section 2)."""
    client_ip = str(connection.client_ip)
    blocked_by: str | None = None
    for flt in rules.filters:
        if connection.client_ip.version != flt.network.version:
            continue
        if connection.client_ip in flt.network:
            if flt.allow:
                return ConnectionDecision(client_ip, accepted=True, filter=flt.name)
            blocked_by = blocked_by or flt.name
    if blocked_by is not None:
        return ConnectionDecision(client_ip, False, blocked_by, replies.CLIENT_REFUSED)
    return ConnectionDecision(client_ip, True)


def check_recipient(
    rules: CompiledRuleSet, address: str, *, tls: bool, matched: tuple[int, ...] | None = None
) -> RecipientDecision:
    """The RCPT TO answer for one recipient (SPEC section 2, Recipients); `matched` are the
    positions of the rules matching it, when the caller has them already."""
    if matched is None:
        return answer_recipient(rules, address, tls=tls)[0]
    parts = split_address(address)
    if parts is None:
        return RecipientDecision(address, replies.BAD_RECIPIENT_SYNTAX, "no domain in address")
    if rules.srs_rule is not None and _srs_address(rules, *parts):
        return _answer(rules, address, (rules.srs_rule,), tls)[0]
    if not within_domains(parts[1], rules.domains):
        return RecipientDecision(address, replies.RELAY_DENIED, f"{parts[1]} is not ours")
    return _answer(rules, address, matched, tls)[0]


def answer_recipient(
    rules: CompiledRuleSet, address: str, *, tls: bool
) -> tuple[RecipientDecision, tuple[int, ...]]:
    """`check_recipient`, with the positions of the rules the recipient goes to: those matching
    it when it is accepted, none when it is refused."""
    parts = split_address(address)
    if parts is None:
        return RecipientDecision(address, replies.BAD_RECIPIENT_SYNTAX, "no domain in address"), ()
    if rules.srs_rule is not None and _srs_address(rules, *parts):
        # A forward's SRS address: the internal relay rule, whatever the file's rules match
        # (SPEC section 3b: no rule needed). Its hash is checked by `check_srs`.
        return _answer(rules, address, (rules.srs_rule,), tls)
    if not within_domains(parts[1], rules.domains):
        return RecipientDecision(address, replies.RELAY_DENIED, f"{parts[1]} is not ours"), ()
    return _answer(rules, address, rules.index.rules_at(*parts), tls)


def _srs_address(rules: CompiledRuleSet, local: str, domain: str) -> bool:
    return domain in rules.srs_domains and is_srs(local)


def check_srs(
    rules: CompiledRuleSet, address: str, keys: SrsKeys | None, now: datetime
) -> RecipientDecision | None:
    """The refusal of an SRS address at an `srs_domain` that does not verify (forged, expired,
    undecodable, or no keys to verify with): `550 5.1.1`; None for any other address, and for
    one that verifies (then `check_recipient` accepts it). The receiver asks at RCPT TO."""
    parts = split_address(address)
    if rules.srs_rule is None or parts is None or not _srs_address(rules, *parts):
        return None
    if keys is None:
        return RecipientDecision(address, replies.SRS_INVALID, "INBOUND_SRS_SECRETS is not set")
    try:
        srs_reverse(address, keys, now)
    except SrsError as exc:
        return RecipientDecision(address, replies.SRS_INVALID, f"{type(exc).__name__}: {exc}")
    return None


def _answer(
    rules: CompiledRuleSet, address: str, matched: tuple[int, ...], tls: bool
) -> tuple[RecipientDecision, tuple[int, ...]]:
    """The answer for a recipient at one of our domains that the rules at `matched` match."""
    if not matched:
        refused = RecipientDecision(address, replies.MAILBOX_UNAVAILABLE, "no enabled rule matches")
        return refused, ()
    by_position = rules.rules
    if len(matched) == 1:  # the usual case, without a join or a generator
        rule = by_position[matched[0]]
        names, all_require_tls = rule.name, rule.require_tls
    else:
        names = ", ".join([by_position[i].name for i in matched])
        all_require_tls = all(by_position[i].require_tls for i in matched)
    if not tls and all_require_tls:
        return RecipientDecision(address, replies.TLS_REQUIRED, f"rules {names} require TLS"), ()
    return RecipientDecision(address, replies.RECIPIENT_OK, f"matched by {names}"), matched


def scanning_enabled(rules: CompiledRuleSet, accepted: Sequence[str]) -> bool:
    """Spam and virus scans run if an enabled rule matching an accepted recipient asks."""
    return any(rules.rules[i].scan_enabled for i in candidates(rules, accepted))


def message_keys(rules: CompiledRuleSet, accepted: Sequence[str]) -> frozenset[Reads]:
    """What the conditions of the rules that may apply read (the condition table's `reads`
    facet), for `inbound.message.read.need_for`."""
    reads: set[Reads] = set()
    for i in candidates(rules, accepted):
        reads.update(rules.rules[i].reads)
    return frozenset(reads)


def effective_verdicts(given: Verdicts, *, scanning: bool) -> tuple[Verdicts, tuple[str, ...]]:
    """What SES would report: spam/virus DISABLED without scanning, policy only on FAIL."""
    policy_kept = (given.dmarc_policy is not None) is (given.dmarc is Verdict.FAIL)
    if policy_kept and (scanning or given.spam is given.virus is Verdict.DISABLED):
        return given, ()  # nothing to change or to note: the verdicts are frozen, so shared
    notes: list[str] = []
    spam, virus = given.spam, given.virus
    if not scanning:
        for kind, value in (("spam", spam), ("virus", virus)):
            if value not in (Verdict.DISABLED, Verdict.GRAY):
                notes.append(
                    f"{kind} verdict {value.value} ignored: no matching rule has "
                    "scan_enabled, so SES reports DISABLED"
                )
        spam = virus = Verdict.DISABLED
    policy = given.dmarc_policy
    if given.dmarc is Verdict.FAIL:
        policy = policy or DmarcPolicy.NONE
    elif policy is not None:
        notes.append(f"dmarc_policy {policy.value} ignored: SES sets it only when DMARC fails")
        policy = None
    return Verdicts(spam, virus, given.spf, given.dkim, given.dmarc, policy), tuple(notes)


def candidates(rules: CompiledRuleSet, accepted: Sequence[str]) -> list[int]:
    """The positions of the rules matching any accepted recipient, in rule-set order."""
    found: set[int] = set()
    for address in accepted:
        found.update(rules.index.rules_for(address))
    return sorted(found)


def attachments_unseen(rules: CompiledRuleSet, positions: list[int], message: MessageFacts) -> str:
    """The rules that may apply and ask about attachments, when the walk did not see every part
    ("" otherwise)."""
    if message.mime_limit is None:
        return ""
    names = [rules.rules[i].name for i in positions if Reads.PARTS in rules.rules[i].reads]
    return f"rule{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else ""


def decide_recipients(
    rules: CompiledRuleSet, rcpt_tos: Sequence[str], *, tls: bool
) -> tuple[tuple[RecipientDecision, ...], dict[int, tuple[str, ...]]]:
    """Each recipient's answer, a repeated accepted address counted once; and the accepted
    recipients by the position of each rule matching them, in envelope order."""
    decisions: list[RecipientDecision] = []
    by_rule: dict[int, tuple[str, ...]] = {}
    seen: set[str] = set()
    for address in rcpt_tos:
        decision, matched = answer_recipient(rules, address, tls=tls)
        key = address.lower()
        if key in seen and matched:
            continue  # a repeated RCPT TO is one recipient (`matched`: it is accepted)
        seen.add(key)
        decisions.append(decision)
        for position in matched:
            # Tuples, as the plan lists them: most rules match one recipient of a message.
            listed = by_rule.get(position)
            by_rule[position] = (address,) if listed is None else (*listed, address)
    return tuple(decisions), by_rule


def why_not(rule: CompiledRule, facts: Facts) -> str:
    """Why the rule does not apply to this message ("" if it does)."""
    # SES bounces mail that a Require rule gets without TLS; we refuse such recipients at RCPT
    # when every rule for them requires TLS, and otherwise the Require rule does not apply.
    if rule.require_tls and not facts.connection.tls:
        return "tls_policy is require and the session is not under TLS"
    return unmet_conditions(rule, facts)


def unmet_conditions(rule: CompiledRule, facts: Facts) -> str:
    """Why the rule's `when`/`unless` keep it from applying ("" if they hold)."""
    unmet = unmet_checks(rule, facts)
    if not unmet:
        return ""
    verb = {"when": "does not hold", "unless": "holds"}
    return "; ".join(f"{key} {c.key} {verb[key]} (saw {c.seen(facts)})" for key, c in unmet)


def unmet_checks(rule: CompiledRule, facts: Facts) -> list[tuple[str, Check]]:
    """The `when` checks that fail, else the `unless` checks that hold (empty: the conditions
    hold). The guard Lambda decides through this too."""
    failed = failing(rule.when, facts)
    if failed:
        return [("when", c) for c in failed]
    return [("unless", c) for c in holding(rule.unless, facts)]
