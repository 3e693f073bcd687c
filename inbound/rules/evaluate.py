"""Evaluation with SES semantics (SPEC section 2): a pure function from facts to a `Plan`.

No sockets, no files, no clock: the message ID and every Lambda result come in as arguments,
so the same facts always give the same plan. The receiver, the dispatcher, the SES handler
and `inbound evaluate` / `inbound test` all decide through here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from inbound.actions import ActionModel, BounceAction, LambdaAction, StopAction
from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts, Reads
from inbound.core.plan import (
    ActionStep,
    ConnectionDecision,
    Plan,
    RecipientDecision,
    RuleRun,
    RuleSkip,
    Stop,
)
from inbound.core.reply import SmtpReply
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.conditions import Check, Facts, failing, holding
from inbound.rules.match import split_address, within_domains

# What a request_response Lambda returned, by (rule position, action position, action);
# None: not known. PAUSE: not known yet, stop the plan here (the dispatcher will invoke it).
LambdaResults = Callable[[int, int, LambdaAction], str | None]
PAUSE = "__pause__"
_DISPOSITIONS = ("STOP_RULE", "STOP_RULE_SET")


def results_by_function(results: Mapping[str, str]) -> LambdaResults:
    """Lambda results keyed by function name, as `--lambda-result NAME=...` gives them."""
    return lambda _rule, _action, action: results.get(action.function_name)


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
    return ConnectionDecision(client_ip, accepted=True)


def check_recipient(
    rules: CompiledRuleSet, address: str, *, tls: bool, matched: tuple[int, ...] | None = None
) -> RecipientDecision:
    """The RCPT TO answer for one recipient (SPEC section 2, Recipients); `matched` are the
    positions of the rules matching it, when the caller has them already."""
    parts = split_address(address)
    if parts is None:
        return RecipientDecision(address, replies.BAD_RECIPIENT_SYNTAX, "no domain in address")
    if not within_domains(parts[1], rules.domains):
        return RecipientDecision(address, replies.RELAY_DENIED, f"{parts[1]} is not ours")
    if matched is None:
        matched = rules.index.rules_for(address)
    if not matched:
        return RecipientDecision(address, replies.MAILBOX_UNAVAILABLE, "no enabled rule matches")
    names = ", ".join(rules.rules[i].name for i in matched)
    if not tls and all(rules.rules[i].require_tls for i in matched):
        return RecipientDecision(address, replies.TLS_REQUIRED, f"rules {names} require TLS")
    return RecipientDecision(address, replies.RECIPIENT_OK, f"matched by {names}")


def scanning_enabled(rules: CompiledRuleSet, accepted: Sequence[str]) -> bool:
    """Spam and virus scans run if an enabled rule matching an accepted recipient asks."""
    return any(rules.rules[i].scan_enabled for i in _candidates(rules, accepted))


def message_keys(rules: CompiledRuleSet, accepted: Sequence[str]) -> frozenset[Reads]:
    """What the conditions of the rules that may apply read (the condition table's `reads`
    facet), for `inbound.message.read.need_for`."""
    reads: set[Reads] = set()
    for i in _candidates(rules, accepted):
        reads.update(rules.rules[i].reads)
    return frozenset(reads)


def pause_at_lambdas(_rule: int, _action: int, _lambda: LambdaAction) -> str:
    """Lambda results for a decision made before any Lambda ran (at the end of DATA)."""
    return PAUSE


def effective_verdicts(given: Verdicts, *, scanning: bool) -> tuple[Verdicts, tuple[str, ...]]:
    """What SES would report: spam/virus DISABLED without scanning, policy only on FAIL."""
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


def _candidates(rules: CompiledRuleSet, accepted: Sequence[str]) -> list[int]:
    found: set[int] = set()
    for address in accepted:
        found.update(rules.index.rules_for(address))
    return sorted(found)


@dataclass
class _Walk:
    """Mutable state of one evaluation; lives only inside `evaluate`."""

    message_id: str
    delivered: bool = False
    session_bounce: tuple[str, int, SmtpReply] | None = None
    ended: bool = False
    pending: tuple[int, int] | None = None


def evaluate(
    rules: CompiledRuleSet,
    *,
    message_id: str,
    connection: Connection,
    envelope: Envelope,
    message: MessageFacts,
    verdicts: Verdicts,
    lambda_results: LambdaResults,
) -> Plan:
    """The whole decision for one message. `verdicts` are those measured or assumed; spam and
    virus become DISABLED here when no matching rule enables scanning."""
    decision = check_connection(rules, connection)
    if not decision.accepted:
        return Plan(message_id, decision, verdicts=effective_verdicts(verdicts, scanning=False)[0])
    matches = {address: rules.index.rules_for(address) for address in envelope.rcpt_tos}
    recipients = _decide_recipients(rules, envelope.rcpt_tos, matches, tls=connection.tls)
    accepted = tuple(r.address for r in recipients if r.accepted)
    candidates = sorted({i for address in accepted for i in matches[address]})
    scanning = any(rules.rules[i].scan_enabled for i in candidates)
    final_verdicts, notes = effective_verdicts(verdicts, scanning=scanning)
    if not accepted:
        return Plan(message_id, decision, recipients, None, final_verdicts, notes=notes)
    if blind := _attachments_unseen(rules, candidates, message):
        # Decided here, so the receiver, `inbound evaluate`/`test`, the dispatcher and the SES
        # handler all refuse alike: an attachment condition is never decided on the parts seen.
        why = (
            f"refused: {message.mime_limit}; the attachment conditions of {blind} would not see all"
        )
        reply = replies.MIME_TOO_COMPLEX
        notes = (*notes, why)
        return Plan(
            message_id, decision, recipients, reply, final_verdicts, notes=notes, refused=why
        )
    facts = Facts(connection, envelope, message, final_verdicts)
    walk = _Walk(message_id)
    runs: list[RuleRun] = []
    skips: list[RuleSkip] = []
    for position in candidates:
        if walk.ended:
            break
        rule = rules.rules[position]
        matched = tuple(a for a in accepted if position in matches[a])
        reason = _why_not(rule, facts)
        if reason:
            skips.append(RuleSkip(rule.name, position, reason))
            continue
        runs.append(_run_rule(rule, matched, walk, lambda_results))
    if walk.session_bounce is not None:
        name, index, bounce_reply = walk.session_bounce
        data_reply: SmtpReply = bounce_reply
        session_bounce: tuple[str, int] | None = (name, index)
    else:
        data_reply, session_bounce = replies.queued(message_id), None
    if not runs:
        notes += ("no rule applied: the message is accepted and nothing is done with it",)
    return Plan(
        message_id,
        decision,
        recipients,
        data_reply,
        final_verdicts,
        tuple(runs),
        tuple(skips),
        session_bounce,
        walk.pending,
        notes,
    )


def _attachments_unseen(
    rules: CompiledRuleSet, candidates: list[int], message: MessageFacts
) -> str:
    """The rules that may apply and ask about attachments, when the walk did not see every part
    ("" otherwise)."""
    if message.mime_limit is None:
        return ""
    names = [rules.rules[i].name for i in candidates if Reads.PARTS in rules.rules[i].reads]
    return f"rule{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else ""


def _decide_recipients(
    rules: CompiledRuleSet,
    rcpt_tos: Sequence[str],
    matches: Mapping[str, tuple[int, ...]],
    *,
    tls: bool,
) -> tuple[RecipientDecision, ...]:
    decisions: list[RecipientDecision] = []
    seen: set[str] = set()
    for address in rcpt_tos:
        decision = check_recipient(rules, address, tls=tls, matched=matches[address])
        key = address.lower()
        if decision.accepted and key in seen:
            continue  # a repeated RCPT TO is one recipient
        seen.add(key)
        decisions.append(decision)
    return tuple(decisions)


def _why_not(rule: CompiledRule, facts: Facts) -> str:
    # SES bounces mail that a Require rule gets without TLS; we refuse such recipients at RCPT
    # when every rule for them requires TLS, and otherwise the Require rule does not apply.
    if rule.require_tls and not facts.connection.tls:
        return "tls_policy is require and the session is not under TLS"
    return unmet_conditions(rule, facts)


def unmet_conditions(rule: CompiledRule, facts: Facts) -> str:
    """Why the rule's `when`/`unless` keep it from applying ("" if they hold)."""
    unmet = unmet_checks(rule, facts)
    verb = {"when": "does not hold", "unless": "holds"}
    return "; ".join(f"{key} {c.key} {verb[key]} (saw {c.seen(facts)})" for key, c in unmet)


def unmet_checks(rule: CompiledRule, facts: Facts) -> list[tuple[str, Check]]:
    """The `when` checks that fail, else the `unless` checks that hold (empty: the conditions
    hold). The guard Lambda decides through this too."""
    failed = failing(rule.when, facts)
    if failed:
        return [("when", c) for c in failed]
    return [("unless", c) for c in holding(rule.unless, facts)]


def _run_rule(
    rule: CompiledRule,
    matched: tuple[str, ...],
    walk: _Walk,
    lambda_results: LambdaResults,
) -> RuleRun:
    steps: list[ActionStep] = []
    stop: Stop | None = None
    for index, action in enumerate(rule.actions):
        disposition = None
        if isinstance(action, LambdaAction) and action.invocation_type == "request_response":
            disposition = lambda_results(rule.index, index, action)
            if disposition == PAUSE:
                walk.pending, walk.ended = (rule.index, index), True
                break
        steps.append(ActionStep(action, index, action.receipt_action(walk.message_id), disposition))
        _note_delivery(action, rule, index, walk)
        if isinstance(action, StopAction):
            stop, walk.ended = "Stop", True
            break
        if disposition in _DISPOSITIONS:
            # SES: anything but STOP_RULE / STOP_RULE_SET (CONTINUE, missing, invalid) goes on.
            stop = "STOP_RULE" if disposition == "STOP_RULE" else "STOP_RULE_SET"
            walk.ended = disposition == "STOP_RULE_SET"
            break
    return RuleRun(rule.name, rule.index, matched, tuple(steps), stop)


def _note_delivery(action: ActionModel, rule: CompiledRule, index: int, walk: _Walk) -> None:
    if isinstance(action, BounceAction) and not walk.delivered and walk.session_bounce is None:
        walk.session_bounce = (rule.name, index, action.reply())
    if action.delivers:
        walk.delivered = True
