"""A plain evaluator for property tests: every rule in order, every pattern tested (no index).

`reference_plan` matches each recipient against each pattern of each rule as SPEC section 2
words it (no index, no grouping of recipients by rule, no fast path), checks every rule's TLS
policy and conditions, and runs the actions as the evaluator before the step redesign did.
`tests/unit/rules/test_linear_reference.py` holds `inbound.rules.evaluate` to it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from inbound.actions import LambdaAction, StopAction
from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.plan import ActionStep, Plan, RecipientDecision, RuleRun, RuleSkip, Stop
from inbound.core.reply import SmtpReply
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.conditions import Facts
from inbound.rules.decide import attachments_unseen, check_connection, why_not
from inbound.rules.match import split_address

MESSAGE_ID = "0123456789abcdefghijklmnopqrstuvwxyz0123"


@dataclass(frozen=True)
class Case:
    """What one evaluation is given."""

    rules: CompiledRuleSet
    connection: Connection
    envelope: Envelope
    message: MessageFacts
    verdicts: Verdicts
    results: dict[str, str]
    known: bool  # the Lambda results are known (`inbound evaluate`), else the plan pauses


def pattern_matches(pattern: str, address: str) -> bool:
    """SPEC section 2, Matching, for one pattern; case-insensitive."""
    parts = split_address(address)
    if parts is None:
        return False
    local, domain = parts
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], f"{local}@{domain}", re.IGNORECASE) is not None
    if "*" in pattern or "?" in pattern:
        return re.fullmatch(fnmatch.translate(pattern), f"{local}@{domain}", re.I) is not None
    wanted = pattern.lower()
    if "@" in wanted:  # the address, or a +label form of it
        user, _, at = wanted.partition("@")
        return domain == at and (local == user or local.startswith(user + "+"))
    if wanted.startswith("."):
        return domain.endswith(wanted)
    return domain == wanted


def scan(rules: CompiledRuleSet, address: str) -> tuple[int, ...]:
    """Every enabled rule, in order, matching `address` (no recipients: any address)."""
    return tuple(
        rule.index
        for rule in rules.rules
        if rule.enabled
        and (
            not rule.model.recipients
            or any(pattern_matches(p, address) for p in rule.model.recipients)
        )
    )


def ours(domain: str, domains: frozenset[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def reference_answer(rules: CompiledRuleSet, address: str, tls: bool) -> RecipientDecision:
    parts = split_address(address)
    if parts is None:
        return RecipientDecision(address, replies.BAD_RECIPIENT_SYNTAX, "no domain in address")
    if not ours(parts[1], rules.domains):
        return RecipientDecision(address, replies.RELAY_DENIED, f"{parts[1]} is not ours")
    matched = scan(rules, address)
    if not matched:
        return RecipientDecision(address, replies.MAILBOX_UNAVAILABLE, "no enabled rule matches")
    names = ", ".join(rules.rules[i].name for i in matched)
    if not tls and all(rules.rules[i].require_tls for i in matched):
        return RecipientDecision(address, replies.TLS_REQUIRED, f"rules {names} require TLS")
    return RecipientDecision(address, replies.RECIPIENT_OK, f"matched by {names}")


def reference_verdicts(given: Verdicts, scanning: bool) -> tuple[Verdicts, tuple[str, ...]]:
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


def reference_plan(case: Case) -> Plan:
    rules, connection = case.rules, case.connection
    decision = check_connection(rules, connection)
    if not decision.accepted:
        return Plan(MESSAGE_ID, decision, verdicts=reference_verdicts(case.verdicts, False)[0])
    recipients: list[RecipientDecision] = []
    seen: set[str] = set()
    for address in case.envelope.rcpt_tos:
        answer = reference_answer(rules, address, connection.tls)
        if answer.accepted and address.lower() in seen:
            continue
        seen.add(address.lower())
        recipients.append(answer)
    accepted = [r.address for r in recipients if r.accepted]
    applying = [r for r in rules.rules if any(r.index in scan(rules, a) for a in accepted)]
    verdicts, notes = reference_verdicts(case.verdicts, any(r.scan_enabled for r in applying))
    if not accepted:
        return Plan(MESSAGE_ID, decision, tuple(recipients), None, verdicts, notes=notes)
    if blind := attachments_unseen(rules, [r.index for r in applying], case.message):
        why = f"refused: {case.message.mime_limit}; the attachment conditions of {blind} "
        why += "would not see all"
        return Plan(
            MESSAGE_ID,
            decision,
            tuple(recipients),
            replies.MIME_TOO_COMPLEX,
            verdicts,
            notes=(*notes, why),
            refused=why,
        )
    facts = Facts(connection, case.envelope, case.message, verdicts)
    walk = _Walk()
    runs: list[RuleRun] = []
    skips: list[RuleSkip] = []
    for rule in applying:
        if walk.ended:
            break
        matched = tuple(a for a in accepted if rule.index in scan(rules, a))
        if reason := why_not(rule, facts):
            skips.append(RuleSkip(rule.name, rule.index, reason))
            continue
        runs.append(_run_rule(rule, matched, walk, case))
    if walk.bounce is not None:
        name, index, data_reply = walk.bounce
        bounce: tuple[str, int] | None = (name, index)
    else:
        data_reply, bounce = replies.queued(MESSAGE_ID), None
    if not runs:
        notes += ("no rule applied: the message is accepted and nothing is done with it",)
    return Plan(
        MESSAGE_ID,
        decision,
        tuple(recipients),
        data_reply,
        verdicts,
        tuple(runs),
        tuple(skips),
        bounce,
        walk.pending,
        notes,
    )


@dataclass
class _Walk:
    delivered: bool = False
    bounce: tuple[str, int, SmtpReply] | None = None
    ended: bool = False
    pending: tuple[int, int] | None = None


def _run_rule(rule: CompiledRule, matched: tuple[str, ...], walk: _Walk, case: Case) -> RuleRun:
    steps: list[ActionStep] = []
    stop: Stop | None = None
    for index, action in enumerate(rule.actions):
        disposition = None
        if isinstance(action, LambdaAction) and action.invocation_type == "request_response":
            if not case.known:
                walk.pending, walk.ended = (rule.index, index), True
                break
            disposition = case.results.get(action.function_name)
        steps.append(ActionStep(action, index, action.receipt_action(MESSAGE_ID), disposition))
        if action.delivers:
            walk.delivered = True
        elif not walk.delivered and walk.bounce is None and (reply := action.session_reply()):
            walk.bounce = (rule.name, index, reply)
        if isinstance(action, StopAction):
            stop, walk.ended = "Stop", True
            break
        if disposition in ("STOP_RULE", "STOP_RULE_SET"):
            stop = "STOP_RULE" if disposition == "STOP_RULE" else "STOP_RULE_SET"
            walk.ended = disposition == "STOP_RULE_SET"
            break
    return RuleRun(rule.name, rule.index, matched, tuple(steps), stop)
