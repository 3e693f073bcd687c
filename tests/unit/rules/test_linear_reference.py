"""The indexed evaluation gives the plan of a plain linear scan (SPEC section 2), on random rule
sets and messages.

`tests.unit.rules.linear_scan.reference_plan` walks every rule of the set in order and tests
every pattern. `evaluate` (the recipient index, the answers grouped by rule, conditions asked
only of rules that have some, verdicts shared when unchanged) must give the same `Plan`, field
for field, reasons and notes included; `check_recipient`, which the receiver asks at RCPT TO,
the same answer as the scan; and `rules_for` the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Attachment, Header, MessageFacts
from inbound.core.plan import Plan
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.decide import check_recipient
from inbound.rules.evaluate import evaluate, results_by_function, results_unknown
from inbound.rules.match import split_address
from inbound.rules.model import RuleSet
from tests.unit.rules.linear_scan import MESSAGE_ID, Case, reference_answer, reference_plan, scan

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
