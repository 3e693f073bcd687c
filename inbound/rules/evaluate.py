"""Evaluation with SES semantics (SPEC section 2), pure, one step at a time.

`Evaluation` walks the rules that apply to one message and hands out their actions as `Step`s;
whoever drives it sends each step's `Outcome` back (a value: continue, stop the rule, stop the
rule set; for add_header the new content) and asks for the next. The runner drives it with
what executing each step gave (`inbound.run.runner`); `evaluate` drives it with outcomes known
in advance: those `inbound evaluate`/`test` assume, or none at the end of DATA, where the plan
stops before the first request_response Lambda (the in-session bounce, SPEC section 2).

It owns the walk (which rules apply, in which order their actions come, where it stops; the
parts are in `inbound.rules.decide`) and must do no I/O and read no clock: the same facts give
the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from inbound.actions import ActionModel, LambdaAction
from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.plan import ActionStep, Plan, RuleRun, RuleSkip, Stop
from inbound.core.reply import SmtpReply
from inbound.core.steps import CONTINUE, Flow, Outcome, StepKey
from inbound.core.verdicts import Verdicts
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.conditions import Facts
from inbound.rules.decide import (
    attachments_unseen,
    check_connection,
    check_recipient,
    decide_recipients,
    effective_verdicts,
    message_keys,
    scanning_enabled,
    unmet_checks,
    unmet_conditions,
    why_not,
)

# The receiver, the guard and the dispatcher ask these on their own; they stay importable here.
__all__ = [
    "Evaluation",
    "LambdaResults",
    "Step",
    "check_connection",
    "check_recipient",
    "effective_verdicts",
    "evaluate",
    "message_keys",
    "results_by_function",
    "results_unknown",
    "scanning_enabled",
    "unmet_checks",
    "unmet_conditions",
]


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

    __slots__ = (
        "_action",
        "_by_rule",
        "_candidates",
        "_decision",
        "_delivered",
        "_ended",
        "_facts",
        "_final",
        "_matched",
        "_next",
        "_notes",
        "_recipients",
        "_rule",
        "_runs",
        "_session_bounce",
        "_skips",
        "_steps",
        "_tls",
        "_waiting",
        "message_id",
        "rules",
        "verdicts",
    )

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
        tls = connection.tls
        self._recipients, by_rule = decide_recipients(rules, envelope.rcpt_tos, tls=tls)
        candidates = sorted(by_rule)
        scanning = False
        for position in candidates:
            if rules.rules[position].scan_enabled:
                scanning = True
                break
        self.verdicts, notes = effective_verdicts(verdicts, scanning=scanning)
        if not candidates:  # no recipient accepted
            return Plan(message_id, decision, self._recipients, None, self.verdicts, notes=notes)
        if blind := attachments_unseen(rules, candidates, message):
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
        self._tls = tls
        self._facts = Facts(connection, envelope, message, self.verdicts)
        self._candidates = candidates
        self._by_rule = by_rule
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
                # `why_not`, asked only of a rule with something to check.
                if (rule.require_tls and not self._tls) or rule.when or rule.unless:
                    reason = why_not(rule, self._facts)
                    if reason:
                        self._skips.append(RuleSkip(rule.name, position, reason))
                        continue
                self._rule, self._steps, self._action = rule, [], 0
                self._matched = self._by_rule[position]
            if self._action < len(rule.actions):
                self._waiting = Step(rule, self._action, rule.actions[self._action], self._matched)
                return self._waiting
            self._close(None, False)
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
        if action.delivers:  # a delivering action has no session reply
            self._delivered = True
        elif not self._delivered and self._session_bounce is None:
            reply = action.session_reply()
            if reply is not None:
                self._session_bounce = (step.rule.name, step.index, reply)
        if action.stops_rule_set:  # whatever its outcome says
            self._close("Stop", True)
        elif (flow := outcome.flow) is Flow.CONTINUE:
            self._action += 1
        elif flow is Flow.STOP_RULE:
            self._close("STOP_RULE", False)
        else:
            self._close("STOP_RULE_SET", True)

    def _close(self, stop: Stop | None, end: bool) -> None:
        rule = self._rule
        assert rule is not None
        self._runs.append(RuleRun(rule.name, rule.index, self._matched, tuple(self._steps), stop))
        self._rule = None
        if end:
            self._ended = True

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
