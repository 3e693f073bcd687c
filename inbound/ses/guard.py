"""The guard Lambda (`inbound.ses.guard_handler`): a rule's `when`/`unless` decided for SES.

`inbound ses export --lower-extensions ARN` puts this function first in every rule with
conditions, invoked `RequestResponse`. It answers `{"disposition": "CONTINUE"}` when the rule's
conditions hold and `{"disposition": "STOP_RULE"}` when they do not, so SES skips the rest of
that rule exactly as the YAML would. It evaluates the YAML rule set packaged with it
(`INBOUND_RULES`, as for `lambda_handler`) through the rules engine's own condition checks.

**Which rule.** SES's event names no rule: `receipt.action` holds only the function ARN and the
invocation type. So the rule is found from what SES does give (decision):
- a guard ARN with `{rule}` (one function or alias per rule): the rule whose ARN, with its name
  in place of `{rule}`, is `receipt.action.functionArn` (else the ARN Lambda was invoked with).
  `INBOUND_GUARD_FUNCTION_ARN` must hold the same `{rule}` ARN given to export;
- one shared ARN: the rules with conditions whose SES `Recipients` match every address of
  `receipt.recipients` (SES lists only the recipients the invoking rule matched). Export refuses
  a set where two such rules with different conditions could match one address, so at most one
  answer exists; should the candidates still disagree, the guard fails (below).

**Facts.** Only what the SES Lambda event carries; each condition's row of the condition table
(`inbound.rules.condition_table`) names the `EventPart` it is read from: envelope sender
`mail.source`, `mail.headers` (From, Subject, any header; From and Subject fall back to
`commonHeaders`), the client IP from the `Received` header SES prepends, and the verdicts and
DMARC policy of the receipt. `size`, `attachment` and `tls` are local only, never guarded.

**Failing safe** (decision). SES's handling of a failed `RequestResponse` invocation is not
documented, so the guard does not rely on it: when it cannot decide (rule set missing or not
exportable, an event it cannot read, no rule or several disagreeing rules, a fact the event
lacks), it logs `guard.failed` and answers `INBOUND_GUARD_ON_ERROR`: `STOP_RULE` by default (a
guarded rule runs only when its conditions are shown to hold; later rules still run),
`CONTINUE` (run the rule as if its conditions held), or `RAISE` (fail the invocation and leave
it to SES).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from inbound.core.envelope import Connection, Envelope, IpAddress
from inbound.core.errors import InboundError
from inbound.core.message import MessageFacts
from inbound.message.parse import parse_message
from inbound.observe.log import emit_fields
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.condition_table import CONDITIONS, ConditionTable, EventPart
from inbound.rules.conditions import Facts
from inbound.rules.evaluate import unmet_checks
from inbound.rules.load import load_rule_set
from inbound.ses.event import Receipt, parse_event, verdicts_of
from inbound.ses.export import Guard, check_guard_arn, guarded, ses_matches, ses_problems

log = logging.getLogger("inbound.ses.guard")

CONTINUE = "CONTINUE"
STOP_RULE = "STOP_RULE"
RAISE = "RAISE"
ON_ERROR_CHOICES = (STOP_RULE, CONTINUE, RAISE)
# Stands for the guard when INBOUND_GUARD_FUNCTION_ARN is unset: only `per_rule` matters.
_SHARED = Guard("arn:aws:lambda:us-east-1:000000000000:function:inbound-guard")
# SES's own Received header: "from HELO (RDNS [IP]) by inbound-smtp.REGION.amazonaws.com ...".
_SES_RECEIVED = re.compile(r"\[([0-9A-Fa-f:.]+)\]\)?\s+by\s+inbound-smtp\.", re.IGNORECASE)


class GuardError(InboundError):
    """The guard cannot decide: its answer is then `INBOUND_GUARD_ON_ERROR`."""


@dataclass(frozen=True)
class GuardedSet:
    """The packaged rule set, checked as export checks it, and its guard."""

    rules: CompiledRuleSet
    guard: Guard

    @property
    def guarded(self) -> tuple[CompiledRule, ...]:
        return tuple(r for r in self.rules.rules if guarded(r.model))


_lock = threading.Lock()
_cache: dict[tuple[str, str | None], GuardedSet] = {}


def clear_cache() -> None:
    """Forget the loaded rule sets (tests; a new configuration)."""
    with _lock:
        _cache.clear()


def load_guarded(path: str, function_arn: str | None) -> GuardedSet:
    """The rule set at `path`, refused unless export would lower it to this guard."""
    with _lock:
        cached = _cache.get((path, function_arn))
    if cached is not None:
        return cached
    guard = _SHARED
    if function_arn:
        problem = check_guard_arn(function_arn)
        if problem is not None:
            raise GuardError(f"INBOUND_GUARD_FUNCTION_ARN: {problem}")
        guard = Guard(function_arn)
    rule_set = load_rule_set(Path(path)).rule_set
    problems = ses_problems(rule_set, guard)
    if problems:
        raise GuardError(
            f"{path}: export would refuse this rule set: {'; '.join(map(str, problems))}"
        )
    loaded = GuardedSet(CompiledRuleSet.build(rule_set), guard)
    with _lock:
        _cache[(path, function_arn)] = loaded
    return loaded


def guard_handler(event: object, context: object) -> dict[str, str]:
    """Decide one guarded rule for SES; see the module docstring."""
    env = os.environ
    on_error = env.get("INBOUND_GUARD_ON_ERROR", STOP_RULE).upper()
    try:
        if on_error not in ON_ERROR_CHOICES:
            choices = ", ".join(ON_ERROR_CHOICES)
            raise GuardError(f"INBOUND_GUARD_ON_ERROR={on_error!r}: expected one of {choices}")
        return {"disposition": decide(event, context, env)}
    except Exception as exc:  # every failure, bugs included: the answer must be the documented one
        answer = STOP_RULE if on_error not in ON_ERROR_CHOICES else on_error
        fields = {"error": str(exc), "error_type": type(exc).__name__, "answer": answer}
        emit_fields(log, "guard.failed", fields, level=logging.ERROR)
        if answer == RAISE:
            raise
        return {"disposition": answer}


def decide(event: object, context: object, env: Mapping[str, str]) -> str:
    """`CONTINUE` or `STOP_RULE` for the rule that invoked the guard; `GuardError` if unsure."""
    found = parse_event(event)
    if found is None:
        raise GuardError("an SES setup notification: the guard takes SES Lambda events only")
    path = env.get("INBOUND_RULES")
    if not path:
        raise GuardError("INBOUND_RULES is not set: the path of the YAML rule set")
    loaded = load_guarded(path, env.get("INBOUND_GUARD_FUNCTION_ARN") or None)
    candidates = identify(loaded, found, context)
    facts = guard_facts(found, candidates)
    answers = {rule.name: _answer(rule, facts) for rule in candidates}
    if len(set(answers.values())) > 1:
        raise GuardError(
            f"message {found.message_id}: rules {', '.join(answers)} all match the recipients "
            "SES gave and disagree; put {rule} in the guard ARN"
        )
    answer = next(iter(answers.values()))
    emit_fields(
        log,
        "guard.decided",
        {"message_id": found.message_id, "rules": list(answers), "disposition": answer},
    )
    return answer


def _answer(rule: CompiledRule, facts: Facts) -> str:
    unmet = unmet_checks(rule, facts)
    return STOP_RULE if unmet else CONTINUE


def identify(loaded: GuardedSet, found: Receipt, context: object) -> list[CompiledRule]:
    """The guarded rules SES may have invoked the guard for (never empty)."""
    if loaded.guard.per_rule:
        arns = [found.action.get("functionArn"), getattr(context, "invoked_function_arn", None)]
        for arn in arns:
            rules = [r for r in loaded.guarded if loaded.guard.arn_for(r.name) == arn]
            if rules:
                return rules
        shown = ", ".join(repr(a) for a in arns if a)
        raise GuardError(f"no guarded rule of {loaded.rules.name!r} has the ARN {shown}")
    recipients = _recipients(found)
    rules = [
        r
        for r in loaded.guarded
        if all(ses_matches(list(r.model.recipients), address) for address in recipients)
    ]
    if not rules:
        raise GuardError(
            f"no guarded rule of {loaded.rules.name!r} matches the recipients "
            f"{', '.join(recipients)}: is the YAML packaged with the guard the one applied?"
        )
    return rules


def _recipients(found: Receipt) -> list[str]:
    recipients = found.receipt.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise GuardError("receipt.recipients is missing or empty")
    if not all(isinstance(r, str) for r in recipients):
        raise GuardError("receipt.recipients is not a list of addresses")
    return recipients


def guard_facts(
    found: Receipt, rules: list[CompiledRule], conditions: ConditionTable = CONDITIONS
) -> Facts:
    """What the conditions of `rules` may ask, from the event alone (`conditions`: the table
    naming the `EventPart` of each). Everything is read; a truncated header list or a missing
    SES `Received` header is an error only when a condition reads that part."""
    parts = conditions.guard_parts(key for rule in rules for key in _keys(rule))
    mail = found.mail
    headers = mail.get("headers")
    headers = headers if isinstance(headers, list) else []
    if EventPart.HEADERS in parts and mail.get("headersTruncated") is True:
        raise GuardError(
            f"message {found.message_id}: SES truncated the headers (over 10 KB), so a "
            "header condition cannot be decided"
        )
    client_ip: IpAddress = ip_address("0.0.0.0")  # noqa: S104 - only RECEIVED conditions read it
    if EventPart.RECEIVED in parts:
        found_ip = ses_client_ip(headers)
        if found_ip is None:
            raise GuardError(f"message {found.message_id}: no client IP in SES's Received header")
        client_ip = found_ip
    source = mail.get("source")
    return Facts(
        Connection(client_ip),
        Envelope(source if isinstance(source, str) else "", tuple(_recipients(found))),
        header_facts(headers, mail.get("commonHeaders")),
        verdicts_of(found.receipt),
    )


def _keys(rule: CompiledRule) -> set[str]:
    keys: set[str] = set()
    for conditions in (rule.model.when, rule.model.unless):
        if conditions is not None:
            keys.update(conditions.used())
    return keys


def header_facts(headers: list[Any], common: object) -> MessageFacts:
    """`MessageFacts` of the event's header list, parsed as the message's own headers are.
    From and Subject come from `commonHeaders` when the (truncated) list lacks them."""
    pairs = [
        (h["name"], h["value"])
        for h in headers
        if isinstance(h, dict) and all(isinstance(h.get(k), str) for k in ("name", "value"))
    ]
    names = {name.lower() for name, _ in pairs}
    if isinstance(common, dict):
        sender = common.get("from")
        if "from" not in names and isinstance(sender, list) and sender:
            pairs.append(("From", ", ".join(str(a) for a in sender)))
        subject = common.get("subject")
        if "subject" not in names and isinstance(subject, str):
            pairs.append(("Subject", subject))
    lines = "".join(f"{name}: {_one_line(value)}\r\n" for name, value in pairs if _is_name(name))
    return parse_message((lines + "\r\n").encode("utf-8", "surrogateescape"))


def _one_line(value: str) -> str:
    # SES unfolds header values; a stray line break must not start a header of its own.
    return " ".join(value.splitlines())


def _is_name(name: str) -> bool:
    return bool(name) and all(33 <= ord(c) <= 126 and c != ":" for c in name)


def ses_client_ip(headers: list[Any]) -> IpAddress | None:
    """The client IP in the topmost `Received` header, when SES wrote it (`by inbound-smtp.`).
    Lower `Received` headers came with the message and could be forged, so they are not read."""
    for header in headers:
        if not isinstance(header, dict) or str(header.get("name", "")).lower() != "received":
            continue
        match = _SES_RECEIVED.search(str(header.get("value", "")))
        if match is None:
            return None
        try:
            return ip_address(match.group(1))
        except ValueError:
            return None
    return None
