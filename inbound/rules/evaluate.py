"""Evaluation with SES semantics (SPEC section 2), pure, one step at a time.

`Evaluation` walks the rules that apply to one message and hands out their actions as `Step`s;
whoever drives it sends each step's `Outcome` back (a value: continue, stop the rule, stop the
rule set; for add_header the new content) and asks for the next. The runner drives it with
what executing each step gave (`inbound.run.runner`); `evaluate` drives it with outcomes known
in advance: those `inbound evaluate`/`test` assume, or none at the end of DATA, where the plan
stops before the first request_response Lambda (the in-session bounce, SPEC section 2).

It owns the decision (filters, recipients, verdicts, which rules apply, in which order their
actions come) and must do no I/O and read no clock: the same facts give the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from inbound.actions import ActionModel, LambdaAction
from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
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
from inbound.core.steps import CONTINUE, Flow, Outcome, StepKey
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.conditions import Check, Facts, failing, holding
from inbound.rules.match import split_address, within_domains


@dataclass(frozen=True, slots=True)
class Step:
    """One action to run: the rule it belongs to, its position, and the rule's recipients."""

    rule: CompiledRule
    index: int
    action: ActionModel
    recipients: tuple[str, ...]

    @property
    def key(self) -> StepKey:
        return StepKey(self.rule.index, self.index)


# The outcome of a step known only by running it (a request_response Lambda), or None: not
# known, and the plan stops before that step.
LambdaResults = Callable[[Step], Outcome | None]


def results_by_function(results: Mapping[str, str]) -> LambdaResults:
    """Dispositions by function name, as `--lambda-result NAME=...` gives them; a function
    not named has no result (it continues, SPEC section 2)."""

    def outcome(step: Step) -> Outcome:
        action = step.action
        name = action.function_name if isinstance(action, LambdaAction) else ""
        return Outcome.disposition(results.get(name))

    return outcome


def results_unknown(_step: Step) -> None:
    """The decision at the end of DATA: no function has run yet."""
    return


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


def message_keys(rules: CompiledRuleSet, accepted: Sequence[str]) -> frozenset[str]:
    """The condition keys of the rules that may apply that look inside the message."""
    keys: set[str] = set()
    for i in _candidates(rules, accepted):
        keys.update(rules.rules[i].message_keys)
    return frozenset(keys)


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
    """The whole decision for one message with the outcomes known in advance: every step
    continues, but a request_response Lambda's, which `lambda_results` gives (None: the plan
    stops before it). `verdicts` are those measured or assumed; spam and virus become DISABLED
    here when no matching rule enables scanning."""
    walk = Evaluation(
        rules,
        message_id=message_id,
        connection=connection,
        envelope=envelope,
        message=message,
        verdicts=verdicts,
    )
    while (step := walk.next_step()) is not None:
        outcome = lambda_results(step) if step.action.awaits_result else CONTINUE
        if outcome is None:
            break
        walk.send(outcome)
    return walk.plan()


class Evaluation:
    """The evaluation of one message, driven step by step: `next_step`, then `send` its
    outcome, until `next_step` gives None; `plan` is the decision so far at any point."""

    def __init__(
        self,
        rules: CompiledRuleSet,
        *,
        message_id: str,
        connection: Connection,
        envelope: Envelope,
        message: MessageFacts,
        verdicts: Verdicts,
    ) -> None:
        self.rules = rules
        self.message_id = message_id
        self._runs: list[RuleRun] = []
        self._skips: list[RuleSkip] = []
        self._notes: tuple[str, ...] = ()
        self._candidates: list[int] = []
        self._next = 0
        self._ended = False
        self._delivered = False
        self._session_bounce: tuple[str, int, SmtpReply] | None = None
        # The rule being walked: its matched recipients, its steps so far, the next action.
        self._rule: CompiledRule | None = None
        self._matched: tuple[str, ...] = ()
        self._steps: list[ActionStep] = []
        self._action = 0
        self._waiting: Step | None = None  # handed out, outcome not sent yet
        self._final = self._begin(connection, envelope, message, verdicts)

    def _begin(
        self,
        connection: Connection,
        envelope: Envelope,
        message: MessageFacts,
        verdicts: Verdicts,
    ) -> Plan | None:
        """Decide everything before the rules' actions; a plan when that is the whole of it."""
        rules, message_id = self.rules, self.message_id
        self._decision = decision = check_connection(rules, connection)
        if not decision.accepted:
            self.verdicts = effective_verdicts(verdicts, scanning=False)[0]
            return Plan(message_id, decision, verdicts=self.verdicts)
        matches = {address: rules.index.rules_for(address) for address in envelope.rcpt_tos}
        self._recipients = _decide_recipients(rules, envelope.rcpt_tos, matches, tls=connection.tls)
        accepted = tuple(r.address for r in self._recipients if r.accepted)
        candidates = sorted({i for address in accepted for i in matches[address]})
        scanning = any(rules.rules[i].scan_enabled for i in candidates)
        self.verdicts, notes = effective_verdicts(verdicts, scanning=scanning)
        if not accepted:
            return Plan(message_id, decision, self._recipients, None, self.verdicts, notes=notes)
        if blind := _attachments_unseen(rules, candidates, message):
            # Decided here, so every entry point refuses alike: an attachment condition is
            # never decided on the parts seen.
            why = f"refused: {message.mime_limit}; the attachment conditions of {blind} "
            why += "would not see all"
            return Plan(
                message_id,
                decision,
                self._recipients,
                replies.MIME_TOO_COMPLEX,
                self.verdicts,
                notes=(*notes, why),
                refused=why,
            )
        self._notes = notes
        self._facts = Facts(connection, envelope, message, self.verdicts)
        self._candidates = candidates
        self._matches = matches
        self._accepted = accepted
        return None

    @property
    def refused(self) -> str | None:
        """Why the message is refused before any rule is tried (MIME limits), if it is."""
        return self._final.refused if self._final is not None else None

    def next_step(self) -> Step | None:
        """The next action to run, or None: evaluation is over."""
        if self._waiting is not None:
            raise RuntimeError("send the outcome of the step handed out before the next")
        if self._final is not None:
            return None
        while not self._ended:
            rule = self._rule
            if rule is None:
                if self._next >= len(self._candidates):
                    self._ended = True
                    break
                position = self._candidates[self._next]
                self._next += 1
                rule = self.rules.rules[position]
                reason = _why_not(rule, self._facts)
                if reason:
                    self._skips.append(RuleSkip(rule.name, position, reason))
                    continue
                self._rule, self._steps, self._action = rule, [], 0
                self._matched = tuple(a for a in self._accepted if position in self._matches[a])
            if self._action < len(rule.actions):
                self._waiting = Step(rule, self._action, rule.actions[self._action], self._matched)
                return self._waiting
            self._close(None)
        return None

    def send(self, outcome: Outcome) -> None:
        """The outcome of the step `next_step` handed out."""
        step, self._waiting = self._waiting, None
        if step is None:
            raise RuntimeError("no step is waiting for an outcome")
        action = step.action
        disposition = outcome.detail if action.awaits_result else None
        receipt = action.receipt_action(self.message_id)
        self._steps.append(ActionStep(action, step.index, receipt, disposition))
        reply = action.session_reply()
        if reply is not None and not self._delivered and self._session_bounce is None:
            self._session_bounce = (step.rule.name, step.index, reply)
        if action.delivers:
            self._delivered = True
        if action.stops_rule_set:
            self._close("Stop", end=True)
        elif outcome.flow is Flow.STOP_RULE:
            self._close("STOP_RULE")
        elif outcome.flow is Flow.STOP_RULE_SET:
            self._close("STOP_RULE_SET", end=True)
        else:
            self._action += 1

    def _close(self, stop: Stop | None, *, end: bool = False) -> None:
        rule = self._rule
        assert rule is not None
        self._runs.append(RuleRun(rule.name, rule.index, self._matched, tuple(self._steps), stop))
        self._rule, self._ended = None, self._ended or end

    def plan(self) -> Plan:
        """The decision so far; `pending` names the step waiting for its outcome, if any."""
        if self._final is not None:
            return self._final
        runs = self._runs
        if self._rule is not None:  # stopped inside a rule: what it reached
            rule = self._rule
            runs = [*runs, RuleRun(rule.name, rule.index, self._matched, tuple(self._steps))]
        if self._session_bounce is not None:
            name, index, data_reply = self._session_bounce
            session_bounce: tuple[str, int] | None = (name, index)
        else:
            data_reply, session_bounce = replies.queued(self.message_id), None
        notes = self._notes
        if not runs:
            notes += ("no rule applied: the message is accepted and nothing is done with it",)
        waiting = self._waiting
        return Plan(
            self.message_id,
            self._decision,
            self._recipients,
            data_reply,
            self.verdicts,
            tuple(runs),
            tuple(self._skips),
            session_bounce,
            (waiting.rule.index, waiting.index) if waiting is not None else None,
            notes,
        )


def _attachments_unseen(
    rules: CompiledRuleSet, candidates: list[int], message: MessageFacts
) -> str:
    """The rules that may apply and ask about attachments, when the walk did not see every part
    ("" otherwise)."""
    if message.mime_limit is None:
        return ""
    names = [rules.rules[i].name for i in candidates if "attachment" in rules.rules[i].message_keys]
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
