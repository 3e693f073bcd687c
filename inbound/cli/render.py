"""Plans as output: the JSON object of SPEC section 6 and the readable trace."""

from __future__ import annotations

import os

from inbound.actions.forward import PlannedForward, planned_forwards
from inbound.core.errors import InputError
from inbound.core.plan import Plan
from inbound.core.reply import SmtpReply
from inbound.rules.compiled import CompiledRuleSet
from inbound.srs import SrsKeys


def _reply(reply: SmtpReply | None) -> dict[str, object] | None:
    return reply.as_json() if reply is not None else None


def forwards(plan: Plan, rules: CompiledRuleSet, mail_from: str | None) -> list[PlannedForward]:
    """The forwards of `plan` as they would be sent; the SRS sender is signed with
    `INBOUND_SRS_SECRETS` when it is set (else its shape, `SRS0=HASH=TT=...`)."""
    try:
        keys = SrsKeys.from_env(os.environ)
    except InputError:
        keys = None
    return planned_forwards(
        plan, lambda index: rules.rules[index].model.recipients, mail_from=mail_from, srs_keys=keys
    )


def _forward_json(planned: PlannedForward) -> dict[str, object]:
    forward = planned.forward
    return {
        "rule": planned.rule,
        "action": planned.index + 1,
        "destinations": [d.address for d in forward.destinations],
        "from_mode": forward.mode,
        "why": forward.why,
        "envelope_sender": forward.envelope_sender,
    }


def plan_json(
    plan: Plan, rules: CompiledRuleSet, mail_from: str | None = None
) -> dict[str, object]:
    """The keys of SPEC section 6 (`inbound evaluate --json`), then `skipped`: every rule
    that did not apply, and why (the reasons of the readable trace); `forwards` when a
    forward step was reached (`mail_from`: the envelope sender, for its SRS address)."""
    refused = not plan.connection.accepted
    out: dict[str, object] = {
        "message_id": plan.message_id,
        "connection": {
            "client_ip": plan.connection.client_ip,
            "accepted": plan.connection.accepted,
            "filter": plan.connection.filter if refused else None,
            "reply": _reply(plan.connection.reply),
        },
        "recipients": [
            {"address": r.address, "accepted": r.accepted, "reply": _reply(r.reply)}
            for r in plan.recipients
        ],
        "data_reply": _reply(plan.data_reply),
        "verdicts": plan.verdicts.as_json(),
        "dmarc_policy": plan.verdicts.dmarc_policy.value if plan.verdicts.dmarc_policy else None,
        "rules": [
            {
                "name": run.name,
                "recipients": list(run.recipients),
                "actions": [step.receipt for step in run.actions],
                "stop": run.stop,
            }
            for run in plan.rules
        ],
        "outcome": plan.outcome,
        "skipped": [{"name": name, "reason": reason} for name, reason in skip_reasons(plan, rules)],
    }
    if planned := forwards(plan, rules, mail_from):
        out["forwards"] = [_forward_json(p) for p in planned]
    return out


def skip_reasons(plan: Plan, rules: CompiledRuleSet) -> list[tuple[str, str]]:
    """Each rule that did not apply, in rule-set order, with the reason in words."""
    if not plan.connection.accepted:
        why = f"not evaluated: the client was refused by filter {plan.connection.filter}"
        return [(r.name, why) for r in rules.rules]
    if plan.data_reply is None:
        return [(r.name, "not evaluated: no recipient accepted") for r in rules.rules]
    if plan.refused is not None:
        return [(r.name, f"not evaluated: {plan.refused}") for r in rules.rules]
    ran = {run.index for run in plan.rules}
    skipped = {skip.index: skip for skip in plan.skipped}
    last_ran = max(ran, default=-1)
    stopped = bool(plan.rules) and plan.rules[-1].stop in ("Stop", "STOP_RULE_SET")
    out: list[tuple[str, str]] = []
    for rule in rules.rules:
        if rule.index in ran:
            continue
        if not rule.enabled:
            reason = "disabled"
        elif rule.index in skipped:
            reason = skipped[rule.index].reason
        elif stopped and rule.index > last_ran:
            reason = "not evaluated: evaluation stopped"
        else:
            reason = "no accepted recipient matches"
        out.append((rule.name, reason))
    return out


def _describe_action(receipt: dict[str, object], disposition: str | None) -> str:
    kind = receipt["type"]
    details = {k: v for k, v in receipt.items() if k != "type"}
    text = f"{kind} " + " ".join(f"{k}={v}" for k, v in details.items())
    if disposition is not None or (
        kind == "Lambda" and receipt["invocationType"] == "RequestResponse"
    ):
        text += f" -> {disposition or 'no result: CONTINUE'}"
    return text.rstrip()


def _forward_lines(planned: PlannedForward) -> list[str]:
    forward = planned.forward
    shown = (
        ", ".join(f"{d.address} (for {d.recipient})" for d in forward.destinations)
        or "nobody (no destination could be made)"
    )
    sender = forward.envelope_sender or "<> (the null sender is never rewritten)"
    return [
        f"           forwards to {shown}",
        f"           From mode: {forward.mode} ({forward.why})",
        f"           envelope sender: {sender}",
    ]


def plan_trace(plan: Plan, rules: CompiledRuleSet, mail_from: str | None = None) -> str:
    """The decision in words, including why each rule did or did not apply (`mail_from`:
    the envelope sender, for a forward's SRS address)."""
    lines = [f"message {plan.message_id} (evaluation only: nothing is stored or sent)"]
    c = plan.connection
    if not c.accepted:
        lines.append(f"connect {c.client_ip}: {c.reply} (refused by filter {c.filter})")
        lines.append("outcome: rejected")
        return "\n".join(lines)
    by = f" (allowed by filter {c.filter})" if c.filter else ""
    lines.append(f"connect {c.client_ip}: accepted{by}")
    for r in plan.recipients:
        lines.append(f"RCPT TO:<{r.address}>  {r.reply}  ({r.reason})")
    verdicts = " ".join(f"{k}={v}" for k, v in plan.verdicts.as_json().items())
    if plan.verdicts.dmarc_policy:
        verdicts += f" dmarc_policy={plan.verdicts.dmarc_policy.value}"
    lines.append(f"verdicts: {verdicts}")
    lines.extend(f"note: {note}" for note in plan.notes)
    if plan.data_reply is None:
        lines.append("DATA: never sent (no recipient accepted)")
        lines.append(f"outcome: {plan.outcome}")
        return "\n".join(lines)
    lines.append("rules:")
    ran = {run.index: run for run in plan.rules}
    by_step = {(p.rule, p.index): p for p in forwards(plan, rules, mail_from)}
    reasons = dict(skip_reasons(plan, rules))
    for rule in rules.rules:
        head = f"  {rule.index + 1:>3}. {rule.name}:"
        if rule.index in ran:
            run = ran[rule.index]
            lines.append(f"{head} applies to {', '.join(run.recipients)}")
            for s in run.actions:
                lines.append(f"         {_describe_action(s.receipt, s.disposition)}")
                if (planned := by_step.get((run.name, s.index))) is not None:
                    lines.extend(_forward_lines(planned))
            if run.stop:
                lines.append(f"         stop: {run.stop}")
        else:
            reason = reasons[rule.name]
            prefix = "" if reason.startswith("not evaluated") else "skipped: "
            lines.append(f"{head} {prefix}{reason}")
    if plan.session_bounce is not None:
        name, index = plan.session_bounce
        lines.append(
            f"DATA: {plan.data_reply} (bounce {index + 1} of rule {name} came before any "
            "action that stores the message: rejected in the session, no action runs)"
        )
    else:
        lines.append(f"DATA: {plan.data_reply}")
    lines.append(f"outcome: {plan.outcome}")
    return "\n".join(lines)
