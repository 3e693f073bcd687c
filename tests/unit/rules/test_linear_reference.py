"""The indexed evaluation gives the plan of a plain linear scan (SPEC section 2), on random rule
sets and messages.

`reference_plan` here walks every rule of the set in order, matches each recipient against
each pattern as SPEC section 2 words it (no index, no grouping of recipients by rule, no fast
path), checks every rule's TLS policy and conditions, and runs the actions as the pre-step
evaluator did. `evaluate` (the recipient index, the answers grouped by rule, conditions asked
only of rules that have some, verdicts shared when unchanged) must give the same `Plan`, field
for field, reasons and notes included; and `check_recipient`, which the receiver asks at RCPT
TO, the same answer as the scan.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from inbound.actions import LambdaAction, StopAction
from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Attachment, Header, MessageFacts
from inbound.core.plan import ActionStep, Plan, RecipientDecision, RuleRun, RuleSkip, Stop
from inbound.core.reply import SmtpReply
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRule, CompiledRuleSet
from inbound.rules.conditions import Facts
from inbound.rules.decide import attachments_unseen, check_connection, check_recipient, why_not
from inbound.rules.evaluate import evaluate, results_by_function, results_unknown
from inbound.rules.match import split_address
from inbound.rules.model import RuleSet

MESSAGE_ID = "0123456789abcdefghijklmnopqrstuvwxyz0123"
OWN = ("example.com", "example.org")
DOMAINS = (*OWN, "sub.example.com", "a.sub.example.com", "other.net", "sub.other.net")
LOCALS = ("a", "b", "a+x", "a+x+y", "+a", "sales")
FUNCTIONS = ("f1", "f2")
PROPERTY = settings(max_examples=300, deadline=None)


def _cased(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from((text, text.upper(), text.title()))


ADDRESSES = st.builds(
    lambda local, domain: f"{local}@{domain}", st.sampled_from(LOCALS), st.sampled_from(DOMAINS)
).flatmap(_cased)
RCPTS = st.one_of(
    ADDRESSES,
    ADDRESSES.map(lambda a: f" {a}."),  # spaces and a trailing dot: the same mailbox
    st.sampled_from(("no-domain", "a@", "@example.com")),
)
RECIPIENT_PATTERNS = st.one_of(
    ADDRESSES,
    st.sampled_from(DOMAINS).flatmap(_cased),
    st.sampled_from(DOMAINS).map(lambda d: "." + d).flatmap(_cased),
    st.sampled_from(("*@example.com", "a*@*", "?@example.org", "re:^s.*@example\\.com$")),
)
CONDITIONS = st.fixed_dictionaries(
    {},
    optional={
        "sender": st.sampled_from(("alice@sender.example", ".sender.example", "re:.*@x\\.example")),
        "subject": st.sampled_from(("hello", "re:^inv", "*sale*")),
        "header": st.just({"X-Tag": ["spam", "re:^bulk"]}),
        "size": st.sampled_from(({"min": 50}, {"max": 150}, {"min": 200, "max": 300})),
        "client_ip": st.sampled_from(("203.0.113.0/24", "198.51.100.0/24")),
        "tls": st.booleans(),
        "spam": st.sampled_from(("PASS", ["FAIL", "GRAY"])),
        "dmarc": st.sampled_from(("FAIL", "PASS")),
        "dmarc_policy": st.sampled_from(("reject", "none")),
        "attachment": st.sampled_from(({"filename": "*.exe"}, {"content_type": "application/pdf"})),
    },
)


def _lambda(function: str, invocation_type: str) -> dict[str, str]:
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
    return {"type": "lambda", "function_arn": arn, "invocation_type": invocation_type}


BOUNCE = {
    "type": "bounce",
    "smtp_reply_code": "550",
    "status_code": "5.1.1",
    "message": "gone",
    "sender": "mailer-daemon@example.com",
}
S3 = {"type": "s3", "bucket": "mail", "prefix": "in"}
ACTIONS = st.sampled_from(
    (
        BOUNCE,
        S3,
        {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:mail"},
        {"type": "add_header", "name": "X-Rule", "value": "seen"},
        {"type": "stop"},
        *(_lambda(f, kind) for f in FUNCTIONS for kind in ("event", "request_response")),
    )
)
RULES = st.fixed_dictionaries(
    {
        "recipients": st.lists(RECIPIENT_PATTERNS, max_size=3),
        "actions": st.one_of(st.just([]), st.lists(ACTIONS, min_size=1, max_size=4)),
    },
    optional={
        "enabled": st.booleans(),
        "tls_policy": st.sampled_from(("optional", "require")),
        "scan_enabled": st.booleans(),
        "when": CONDITIONS,
        "unless": CONDITIONS,
    },
)
VERDICT_VALUES = st.sampled_from(list(Verdict))


@dataclass(frozen=True)
class Case:
    rules: CompiledRuleSet
    connection: Connection
    envelope: Envelope
    message: MessageFacts
    verdicts: Verdicts
    results: dict[str, str]
    known: bool  # the Lambda results are known (`inbound evaluate`), else the plan pauses


@st.composite
def cases(draw: st.DrawFn) -> Case:
    rules: list[dict[str, Any]] = draw(st.lists(RULES, max_size=8))
    filters = draw(
        st.lists(
            st.sampled_from(
                (
                    {"name": "block-doc", "policy": "block", "cidr": "203.0.113.0/24"},
                    {"name": "allow-one", "policy": "allow", "cidr": "203.0.113.5/32"},
                )
            ),
            max_size=2,
            unique_by=lambda f: f["name"],
        )
    )
    rule_set = {
        "name": "linear",
        "domains": draw(st.lists(st.sampled_from(OWN), min_size=1, max_size=2, unique=True)),
        "filters": filters,
        "rules": [{"name": f"r{i}", **rule} for i, rule in enumerate(rules)],
    }
    compiled = CompiledRuleSet.build(RuleSet.model_validate(rule_set))
    ip = draw(st.sampled_from(("203.0.113.5", "203.0.113.9", "198.51.100.7", "2001:db8::1")))
    message = MessageFacts(
        size=draw(st.sampled_from((10, 100, 250))),
        headers=tuple(
            Header("X-Tag", v, v) for v in draw(st.lists(st.sampled_from(("bulk", "x"))))
        ),
        from_addresses=("alice@sender.example",),
        subject=draw(st.sampled_from((None, "hello", "Invoice 3", "big SALE"))),
        attachments=tuple(
            Attachment(name, kind)
            for name, kind in draw(
                st.lists(st.sampled_from((("a.exe", "application/x"), (None, "application/pdf"))))
            )
        ),
        mime_limit=draw(st.sampled_from((None, None, "more than 3 parts"))),
    )
    spam, virus, spf, dkim, dmarc = (draw(VERDICT_VALUES) for _ in range(5))
    verdicts = Verdicts(spam, virus, spf, dkim, dmarc, draw(st.sampled_from((None, *DmarcPolicy))))
    return Case(
        compiled,
        Connection.of(ip, tls=draw(st.booleans())),
        Envelope(
            draw(st.sampled_from(("", "alice@sender.example", "bob@x.example"))),
            tuple(draw(st.lists(RCPTS, min_size=1, max_size=4))),
        ),
        message,
        verdicts,
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    f: st.sampled_from(("STOP_RULE", "STOP_RULE_SET", "CONTINUE"))
                    for f in FUNCTIONS
                },
            )
        ),
        draw(st.booleans()),
    )


def case_of(
    rules: list[dict[str, Any]], rcpts: tuple[str, ...], *, tls: bool = False, known: bool = True
) -> Case:
    """A case written out, for the examples pinned below."""
    rule_set = {"name": "pinned", "domains": ["example.com"], "rules": rules}
    return Case(
        CompiledRuleSet.build(RuleSet.model_validate(rule_set)),
        Connection.of("198.51.100.7", tls=tls),
        Envelope("alice@sender.example", rcpts),
        MessageFacts(size=100, subject="hello"),
        Verdicts(),
        {"f1": "STOP_RULE"},
        known,
    )


# Cases the generator reaches only now and then.
PINNED = (
    # A bounce before any delivering action answers DATA; the one after does not.
    case_of(
        [
            {"name": "r0", "actions": [{"type": "add_header", "name": "X", "value": "1"}, BOUNCE]},
            {"name": "r1", "recipients": ["example.com"], "actions": [S3, BOUNCE]},
        ],
        ("a@example.com", "A@EXAMPLE.COM", "b@example.com"),
    ),
    # Two globs of one rule match, and nothing else does: the rule is listed once.
    case_of(
        [
            {"name": "r0", "recipients": ["a@example.com"], "actions": [S3]},
            {"name": "r1", "recipients": ["*@example.com", "a*@*"], "actions": [S3]},
        ],
        ("ab@example.com", "a+x@example.com"),
    ),
    # One rule of two requires TLS: the recipient is accepted, that rule skipped.
    case_of(
        [
            {"name": "r0", "recipients": ["a@example.com"], "tls_policy": "require"},
            {"name": "r1", "recipients": [".example.com", "example.com"], "actions": [S3]},
        ],
        ("a@example.com", "b@x.example.com"),
    ),
    # A rule whose `unless` holds is skipped; a request_response Lambda stops its rule, or
    # (results unknown) the plan waits for it.
    *(
        case_of(
            [
                {"name": "r0", "unless": {"subject": "hello"}, "actions": [S3]},
                {"name": "r1", "actions": [_lambda("f1", "request_response"), S3]},
                {"name": "r2", "when": {"subject": "re:^hel"}, "actions": [BOUNCE]},
            ],
            ("a@example.com",),
            known=known,
        )
        for known in (True, False)
    ),
)


# --- The linear scan ---------------------------------------------------------------------------


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


# --- Properties --------------------------------------------------------------------------------


def pinned(*more: object) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The test with every case of `PINNED` as an example (`more`: its other arguments)."""

    def pin(test: Callable[..., None]) -> Callable[..., None]:
        for case in reversed(PINNED):
            test = example(case, *more)(test)
        return test

    return pin


def _evaluate(case: Case) -> Plan:
    results = results_by_function(case.results) if case.known else results_unknown
    return evaluate(
        case.rules,
        message_id=MESSAGE_ID,
        connection=case.connection,
        envelope=case.envelope,
        message=case.message,
        verdicts=case.verdicts,
        lambda_results=results,
    )


@PROPERTY
@given(cases())
@pinned()
def test_evaluation_gives_the_plan_of_a_linear_scan(case: Case) -> None:
    assert _evaluate(case) == reference_plan(case)


@PROPERTY
@given(cases(), st.lists(RCPTS, max_size=4))
@pinned([])
def test_the_index_finds_what_a_linear_scan_finds(case: Case, more: list[str]) -> None:
    for address in (*case.envelope.rcpt_tos, *more):
        if split_address(address) is not None:
            assert case.rules.index.rules_for(address) == scan(case.rules, address), address
        for tls in (False, True):
            expected = reference_answer(case.rules, address, tls)
            assert check_recipient(case.rules, address, tls=tls) == expected
