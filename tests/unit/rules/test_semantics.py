"""SPEC section 2 (and the section 4 extensions), one table row per semantic rule."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import pytest

from inbound.config.yamlsource import load_yaml
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Attachment, Header, MessageFacts
from inbound.core.plan import Plan
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.rules.model import RuleSet

MESSAGE_ID = "0" * 40
MESSAGE = MessageFacts(
    size=2048,
    headers=(
        Header("From", "Alice <alice@sender.example>", "Alice <alice@sender.example>"),
        Header("Subject", "=?utf-8?q?Invoice_42?=", "Invoice 42"),
        Header("X-Priority", "1", "1"),
    ),
    from_addresses=("alice@sender.example",),
    subject="Invoice 42",
    attachments=(Attachment("invoice-42.PDF", "application/pdf"),),
)


@dataclass
class Case:
    rules: str
    rcpt: tuple[str, ...] = ("user@example.com",)
    filters: str = "[]"
    client_ip: str = "203.0.113.5"
    tls: bool = False
    mail_from: str = "alice@sender.example"
    verdicts: Verdicts = field(default_factory=Verdicts)
    lambdas: dict[str, str] = field(default_factory=dict)
    message: MessageFacts = MESSAGE


def run(case: Case) -> Plan:
    text = textwrap.dedent(case.rules)
    data = {
        "version": 1,
        "name": "t",
        "domains": ["example.com", "example.org"],
        "filters": load_yaml(case.filters, "filters")[0],
        "rules": load_yaml(text, "rules")[0],
    }
    rules = CompiledRuleSet.build(RuleSet.model_validate(data))
    return evaluate(
        rules,
        message_id=MESSAGE_ID,
        connection=Connection.of(case.client_ip, "mx.sender.example", tls=case.tls),
        envelope=Envelope(case.mail_from, case.rcpt),
        message=case.message,
        verdicts=case.verdicts,
        lambda_results=results_by_function(case.lambdas),
    )


def replies(plan: Plan) -> dict[str, str]:
    return {r.address: f"{r.reply.code} {r.reply.status}" for r in plan.recipients}


def ran(plan: Plan) -> list[str]:
    return [r.name for r in plan.rules]


def actions(plan: Plan) -> list[str]:
    return [s.action.receipt_type for r in plan.rules for s in r.actions]


S3 = "{type: s3, bucket: mail}"
ALL = f"[{{name: all, actions: [{S3}]}}]"

# --- Connection ------------------------------------------------------------------------------

CONNECTION = {
    "allow_wins_over_block": (
        "[{name: office, policy: allow, cidr: 203.0.113.0/28},"
        " {name: world, policy: block, cidr: 0.0.0.0/0}]",
        "203.0.113.5",
        (True, None),
    ),
    "block_refuses_with_554": (
        "[{name: world, policy: block, cidr: 0.0.0.0/0}]",
        "203.0.113.5",
        (False, "world"),
    ),
    "allow_of_other_range_does_not_help": (
        "[{name: office, policy: allow, cidr: 198.51.100.0/24},"
        " {name: world, policy: block, cidr: 0.0.0.0/0}]",
        "203.0.113.5",
        (False, "world"),
    ),
    "no_filter_matches_is_accepted": (
        "[{name: net, policy: block, cidr: 198.51.100.0/24}]",
        "203.0.113.5",
        (True, None),
    ),
    "ipv6_client_against_ipv4_block": (
        "[{name: world, policy: block, cidr: 0.0.0.0/0}]",
        "2001:db8::1",
        (True, None),
    ),
    "ipv6_block": (
        "[{name: v6, policy: block, cidr: '2001:db8::/32'}]",
        "2001:db8::1",
        (False, "v6"),
    ),
}


@pytest.mark.parametrize(("filters", "client_ip", "expected"), CONNECTION.values(), ids=CONNECTION)
def test_receipt_filters(filters: str, client_ip: str, expected: tuple[bool, str | None]) -> None:
    plan = run(Case(ALL, filters=filters, client_ip=client_ip))
    accepted, blocked_by = expected
    assert plan.connection.accepted is accepted
    if accepted:
        assert plan.outcome == "accepted"
    else:
        assert plan.connection.filter == blocked_by
        assert plan.connection.reply is not None
        assert (plan.connection.reply.code, plan.connection.reply.status) == (554, "5.7.1")
        assert plan.recipients == ()
        assert plan.data_reply is None
        assert plan.outcome == "rejected"


# --- Recipients ------------------------------------------------------------------------------

RECIPIENTS: dict[str, tuple[str, tuple[str, ...], bool, dict[str, str]]] = {
    "unmatched_recipient_gets_550_5_1_1": (
        f"[{{name: r, recipients: [a@example.com], actions: [{S3}]}}]",
        ("b@example.com",),
        False,
        {"b@example.com": "550 5.1.1"},
    ),
    "foreign_domain_gets_550_5_7_1": (
        ALL,
        ("a@example.net",),
        False,
        {"a@example.net": "550 5.7.1"},
    ),
    "subdomain_of_a_domain_is_ours": (
        ALL,
        ("a@eu.example.com",),
        False,
        {"a@eu.example.com": "250 2.1.5"},
    ),
    "address_without_domain_is_bad_syntax": (
        ALL,
        ("postmaster",),
        False,
        {"postmaster": "501 5.1.3"},
    ),
    "disabled_rule_accepts_nothing": (
        f"[{{name: r, enabled: false, actions: [{S3}]}}]",
        ("a@example.com",),
        False,
        {"a@example.com": "550 5.1.1"},
    ),
    "address_matches_itself_and_label_forms": (
        f"[{{name: r, recipients: [user@example.com], actions: [{S3}]}}]",
        ("user@example.com", "user+news@example.com", "user2@example.com"),
        False,
        {
            "user@example.com": "250 2.1.5",
            "user+news@example.com": "250 2.1.5",
            "user2@example.com": "550 5.1.1",
        },
    ),
    "domain_matches_exactly_not_subdomains": (
        f"[{{name: r, recipients: [example.com], actions: [{S3}]}}]",
        ("x@example.com", "x@sub.example.com"),
        False,
        {"x@example.com": "250 2.1.5", "x@sub.example.com": "550 5.1.1"},
    ),
    "dot_domain_matches_any_depth_not_itself": (
        f"[{{name: r, recipients: [.example.com], actions: [{S3}]}}]",
        ("x@example.com", "x@a.example.com", "x@b.a.example.com"),
        False,
        {
            "x@example.com": "550 5.1.1",
            "x@a.example.com": "250 2.1.5",
            "x@b.a.example.com": "250 2.1.5",
        },
    ),
    "matching_is_case_insensitive": (
        f"[{{name: r, recipients: [User@Example.COM], actions: [{S3}]}}]",
        ("USER@example.com",),
        False,
        {"USER@example.com": "250 2.1.5"},
    ),
    "glob_matches_whole_address": (
        f"[{{name: r, recipients: ['sales-*@example.com'], actions: [{S3}]}}]",
        ("sales-eu@example.com", "xsales-eu@example.com"),
        False,
        {"sales-eu@example.com": "250 2.1.5", "xsales-eu@example.com": "550 5.1.1"},
    ),
    "regex_matches_whole_address": (
        f"[{{name: r, recipients: ['re:(bill|invoice)s?@example\\.com'], actions: [{S3}]}}]",
        ("bills@example.com", "bills@example.com.evil"),
        False,
        {"bills@example.com": "250 2.1.5", "bills@example.com.evil": "550 5.7.1"},
    ),
    "tls_required_but_plain_gets_530": (
        f"[{{name: r, tls_policy: require, actions: [{S3}]}}]",
        ("a@example.com",),
        False,
        {"a@example.com": "530 5.7.0"},
    ),
    "tls_required_under_tls_is_accepted": (
        f"[{{name: r, tls_policy: require, actions: [{S3}]}}]",
        ("a@example.com",),
        True,
        {"a@example.com": "250 2.1.5"},
    ),
    "tls_required_and_an_optional_rule_accepts": (
        f"[{{name: r, tls_policy: require, actions: [{S3}]}},"
        f" {{name: o, recipients: [a@example.com], actions: [{S3}]}}]",
        ("a@example.com",),
        False,
        {"a@example.com": "250 2.1.5"},
    ),
    "repeated_recipient_counts_once": (
        ALL,
        ("a@example.com", "A@example.com"),
        False,
        {"a@example.com": "250 2.1.5"},
    ),
}


@pytest.mark.parametrize(("rules", "rcpt", "tls", "expected"), RECIPIENTS.values(), ids=RECIPIENTS)
def test_recipient_acceptance(
    rules: str, rcpt: tuple[str, ...], tls: bool, expected: dict[str, str]
) -> None:
    plan = run(Case(rules, rcpt=rcpt, tls=tls))
    assert replies(plan) == expected
    if not any(reply.startswith("250") for reply in expected.values()):
        assert plan.data_reply is None
        assert plan.outcome == "rejected"


def test_tls_required_rule_does_not_apply_to_plain_mail_accepted_by_another() -> None:
    plan = run(
        Case(
            f"[{{name: r, tls_policy: require, actions: [{S3}]}},"
            f" {{name: o, recipients: [a@example.com], actions: [{S3}]}}]",
            rcpt=("a@example.com",),
        )
    )
    assert ran(plan) == ["o"]
    assert "TLS" in plan.skipped[0].reason


# --- Rules -----------------------------------------------------------------------------------

RULES: dict[str, tuple[Case, list[str], list[str], list[str | None]]] = {
    "every_matching_rule_runs_in_file_order": (
        Case(f"[{{name: one, actions: [{S3}]}}, {{name: two, actions: [{S3}]}}]"),
        ["one", "two"],
        ["S3", "S3"],
        [None, None],
    ),
    "rule_without_matching_recipient_does_not_run": (
        Case(
            f"[{{name: one, recipients: [a@example.com], actions: [{S3}]}},"
            f" {{name: two, recipients: [b@example.com], actions: [{S3}]}}]",
            rcpt=("b@example.com",),
        ),
        ["two"],
        ["S3"],
        [None],
    ),
    "disabled_rule_does_not_run": (
        Case(
            f"[{{name: disabled, enabled: false, actions: [{S3}]}}, {{name: live, actions: [{S3}]}}]"
        ),
        ["live"],
        ["S3"],
        [None],
    ),
    "stop_ends_the_rule_set": (
        Case(
            f"[{{name: one, actions: [{S3}, {{type: stop}}, {S3}]}}, {{name: two, actions: [{S3}]}}]"
        ),
        ["one"],
        ["S3", "Stop"],
        ["Stop"],
    ),
    "lambda_stop_rule_skips_the_rest_of_the_rule_only": (
        Case(
            "[{name: one, actions: [{type: lambda, invocation_type: request_response,"
            " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:f'}, "
            f"{S3}]}}, {{name: two, actions: [{S3}]}}]",
            lambdas={"f": "STOP_RULE"},
        ),
        ["one", "two"],
        ["Lambda", "S3"],
        ["STOP_RULE", None],
    ),
    "lambda_stop_rule_set_ends_evaluation": (
        Case(
            "[{name: one, actions: [{type: lambda, invocation_type: request_response,"
            " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:f'}, "
            f"{S3}]}}, {{name: two, actions: [{S3}]}}]",
            lambdas={"f": "STOP_RULE_SET"},
        ),
        ["one"],
        ["Lambda"],
        ["STOP_RULE_SET"],
    ),
    "lambda_continue_invalid_or_missing_result_continues": (
        Case(
            "[{name: one, actions: ["
            "{type: lambda, invocation_type: request_response,"
            " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:f'},"
            "{type: lambda, invocation_type: request_response,"
            " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:g'},"
            "{type: lambda, invocation_type: request_response,"
            " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:h'}]}]",
            lambdas={"f": "CONTINUE", "g": "stop_rule_set"},
        ),
        ["one"],
        ["Lambda", "Lambda", "Lambda"],
        [None],
    ),
    "event_lambda_result_is_ignored": (
        Case(
            "[{name: one, actions: [{type: lambda,"
            " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:f'}, "
            f"{S3}]}}]",
            lambdas={"f": "STOP_RULE_SET"},
        ),
        ["one"],
        ["Lambda", "S3"],
        [None],
    ),
    "bounce_does_not_stop_evaluation": (
        Case(
            f"[{{name: one, actions: [{S3}, {{type: bounce, smtp_reply_code: '550',"
            " message: bounced, sender: m@example.com}]},"
            f" {{name: two, actions: [{S3}]}}]"
        ),
        ["one", "two"],
        ["S3", "Bounce", "S3"],
        [None, None],
    ),
    "add_header_is_recorded_in_order": (
        Case(f"[{{name: one, actions: [{{type: add_header, name: X-A, value: b}}, {S3}]}}]"),
        ["one"],
        ["AddHeader", "S3"],
        [None],
    ),
}


@pytest.mark.parametrize(("case", "rules", "types", "stops"), RULES.values(), ids=RULES)
def test_rule_order_and_stops(
    case: Case, rules: list[str], types: list[str], stops: list[str | None]
) -> None:
    plan = run(case)
    assert ran(plan) == rules
    assert actions(plan) == types
    assert [r.stop for r in plan.rules] == stops


def test_rule_recipients_are_the_envelope_recipients_it_matched() -> None:
    plan = run(
        Case(
            f"[{{name: sales, recipients: [sales@example.com, .example.org], actions: [{S3}]}},"
            f" {{name: all, actions: [{S3}]}}]",
            rcpt=("sales+x@example.com", "x@eu.example.org", "bob@example.com"),
        )
    )
    assert [(r.name, r.recipients) for r in plan.rules] == [
        ("sales", ("sales+x@example.com", "x@eu.example.org")),
        ("all", ("sales+x@example.com", "x@eu.example.org", "bob@example.com")),
    ]
    # A rule applies to the message once, however many recipients it matched.
    assert actions(plan) == ["S3", "S3"]


def test_s3_action_object_uses_ses_field_names() -> None:
    plan = run(Case("[{name: r, actions: [{type: s3, bucket: mail, prefix: in}]}]"))
    assert plan.rules[0].actions[0].receipt == {
        "type": "S3",
        "bucketName": "mail",
        "objectKeyPrefix": "in",
        "objectKey": f"in/{MESSAGE_ID}",
    }


# --- Bounce ----------------------------------------------------------------------------------

BOUNCE = "{type: bounce, smtp_reply_code: '550', status_code: '5.7.1', message: Rejected, sender: m@example.com}"
SOFT = "{type: bounce, smtp_reply_code: 450, message: Later, sender: m@example.com}"
RR_LAMBDA = (
    "{type: lambda, invocation_type: request_response,"
    " function_arn: 'arn:aws:lambda:us-east-1:123456789012:function:f'}"
)

BOUNCES: dict[str, tuple[str, str | None]] = {
    "bounce_before_any_store_rejects_in_session": (
        f"[{{name: r, actions: [{BOUNCE}]}}]",
        "550 5.7.1 Rejected",
    ),
    "bounce_in_a_later_rule_before_any_store_rejects": (
        f"[{{name: h, actions: [{{type: add_header, name: X-A, value: b}}]}},"
        f" {{name: r, actions: [{BOUNCE}, {S3}]}}]",
        "550 5.7.1 Rejected",
    ),
    "bounce_after_s3_is_a_dsn": (f"[{{name: r, actions: [{S3}, {BOUNCE}]}}]", None),
    "bounce_after_a_request_response_lambda_is_a_dsn": (
        f"[{{name: r, actions: [{RR_LAMBDA}, {BOUNCE}]}}]",
        None,
    ),
    "bounce_after_sns_in_an_earlier_rule_is_a_dsn": (
        "[{name: a, actions: [{type: sns, topic_arn: 'arn:aws:sns:us-east-1:123456789012:t'}]},"
        f" {{name: b, actions: [{BOUNCE}]}}]",
        None,
    ),
    "temporary_bounce_defaults_its_status": (
        f"[{{name: r, actions: [{SOFT}]}}]",
        "450 4.0.0 Later",
    ),
    "first_of_two_bounces_answers": (
        f"[{{name: r, actions: [{SOFT}, {BOUNCE}]}}]",
        "450 4.0.0 Later",
    ),
}


@pytest.mark.parametrize(("rules", "in_session"), BOUNCES.values(), ids=BOUNCES)
def test_in_session_bounce(rules: str, in_session: str | None) -> None:
    plan = run(Case(rules))
    assert plan.data_reply is not None
    if in_session is None:
        assert plan.session_bounce is None
        assert plan.data_reply.code == 250
        assert plan.outcome == "accepted"
    else:
        assert str(plan.data_reply) == in_session
        assert plan.session_bounce is not None
        assert plan.outcome == "rejected"
    assert "Bounce" in actions(plan)  # a bounce never hides the rest of the trace


# --- Verdicts --------------------------------------------------------------------------------

GIVEN = Verdicts(
    spam=Verdict.FAIL,
    virus=Verdict.PASS,
    spf=Verdict.PASS,
    dkim=Verdict.FAIL,
    dmarc=Verdict.PASS,
    dmarc_policy=DmarcPolicy.REJECT,
)

VERDICTS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "scan_off_gives_disabled_spam_and_virus": (
        ALL,
        ("a@example.com",),
        {"spam": "DISABLED", "virus": "DISABLED", "spf": "PASS", "dkim": "FAIL", "dmarc": "PASS"},
    ),
    "scan_enabled_by_a_matching_rule": (
        f"[{{name: s, scan_enabled: true, actions: [{S3}]}}]",
        ("a@example.com",),
        {"spam": "FAIL", "virus": "PASS", "spf": "PASS", "dkim": "FAIL", "dmarc": "PASS"},
    ),
    "scan_enabled_even_if_the_rules_when_fails": (
        f"[{{name: s, scan_enabled: true, when: {{tls: true}}, actions: [{S3}]}}]",
        ("a@example.com",),
        {"spam": "FAIL", "virus": "PASS", "spf": "PASS", "dkim": "FAIL", "dmarc": "PASS"},
    ),
    "scan_enabled_on_a_rule_for_other_recipients_does_not_count": (
        f"[{{name: s, scan_enabled: true, recipients: [b@example.com], actions: [{S3}]}},"
        f" {{name: a, recipients: [a@example.com], actions: [{S3}]}}]",
        ("a@example.com",),
        {"spam": "DISABLED", "virus": "DISABLED", "spf": "PASS", "dkim": "FAIL", "dmarc": "PASS"},
    ),
    "scan_enabled_on_a_disabled_rule_does_not_count": (
        f"[{{name: s, enabled: false, scan_enabled: true, actions: [{S3}]}},"
        f" {{name: a, actions: [{S3}]}}]",
        ("a@example.com",),
        {"spam": "DISABLED", "virus": "DISABLED", "spf": "PASS", "dkim": "FAIL", "dmarc": "PASS"},
    ),
}


@pytest.mark.parametrize(("rules", "rcpt", "expected"), VERDICTS.values(), ids=VERDICTS)
def test_verdicts(rules: str, rcpt: tuple[str, ...], expected: dict[str, str]) -> None:
    plan = run(Case(rules, rcpt=rcpt, verdicts=GIVEN))
    assert plan.verdicts.as_json() == expected


def test_dmarc_policy_only_when_dmarc_fails() -> None:
    passed = run(Case(ALL, verdicts=GIVEN))
    assert passed.verdicts.dmarc_policy is None
    failed = run(
        Case(ALL, verdicts=Verdicts(dmarc=Verdict.FAIL, dmarc_policy=DmarcPolicy.QUARANTINE))
    )
    assert failed.verdicts.dmarc_policy is DmarcPolicy.QUARANTINE
    unknown = run(Case(ALL, verdicts=Verdicts(dmarc=Verdict.FAIL)))
    assert unknown.verdicts.dmarc_policy is DmarcPolicy.NONE


# --- Extensions: when / unless ---------------------------------------------------------------

CONDITIONS: dict[str, tuple[str, Case, bool]] = {
    "sender_address": ("{sender: alice@sender.example}", Case(""), True),
    "sender_domain_other": ("{sender: other.example}", Case(""), False),
    "sender_null_matches_glob_star_only": ("{sender: '*'}", Case("", mail_from=""), True),
    "from_domain_pattern": ("{from: sender.example}", Case(""), True),
    "from_dot_domain_is_not_the_domain_itself": ("{from: .sender.example}", Case(""), False),
    "from_any_of_list": ("{from: [bob@x.example, 're:alice@.*']}", Case(""), True),
    "subject_glob_case_insensitive": ("{subject: '*INVOICE*'}", Case(""), True),
    "subject_exact_value": ("{subject: invoice 42}", Case(""), True),
    "subject_regex": ("{subject: 're:Invoice \\d+'}", Case(""), True),
    "subject_glob_no_match": ("{subject: 'Receipt*'}", Case(""), False),
    "header_decoded_value": ("{header: {X-Priority: '1'}}", Case(""), True),
    "header_missing": ("{header: {X-Spam-Flag: 'YES'}}", Case(""), False),
    "size_in_range": ("{size: {min: 1000, max: 4096}}", Case(""), True),
    "size_too_big": ("{size: {max: 1000}}", Case(""), False),
    "client_ip_in_cidr": ("{client_ip: [203.0.113.0/24]}", Case(""), True),
    "client_ip_outside": ("{client_ip: 198.51.100.0/24}", Case(""), False),
    "tls_false_on_plain": ("{tls: false}", Case(""), True),
    "tls_true_on_plain": ("{tls: true}", Case(""), False),
    "verdict_any_of": ("{spf: [FAIL, GRAY]}", Case(""), True),
    "verdict_not_listed": ("{dkim: PASS}", Case(""), False),
    "dmarc_policy_on_fail": (
        "{dmarc_policy: [reject]}",
        Case("", verdicts=Verdicts(dmarc=Verdict.FAIL, dmarc_policy=DmarcPolicy.REJECT)),
        True,
    ),
    "dmarc_policy_absent_when_dmarc_passes": ("{dmarc_policy: [none]}", Case(""), False),
    "attachment_filename_glob": ("{attachment: {filename: '*.pdf'}}", Case(""), True),
    "attachment_type_and_name_on_the_same_part": (
        "{attachment: {filename: '*.pdf', content_type: 'image/*'}}",
        Case(""),
        False,
    ),
    "all_keys_must_hold": ("{sender: alice@sender.example, tls: true}", Case(""), False),
}


@pytest.mark.parametrize(("conditions", "case", "holds"), CONDITIONS.values(), ids=CONDITIONS)
def test_when(conditions: str, case: Case, holds: bool) -> None:
    case.rules = f"[{{name: r, when: {conditions}, actions: [{S3}]}}]"
    plan = run(case)
    assert ran(plan) == (["r"] if holds else [])
    if not holds:
        assert plan.skipped[0].reason.startswith("when ")
        # Conditions are checked after DATA: the recipient was accepted all the same.
        assert plan.outcome == "accepted"


@pytest.mark.parametrize(("conditions", "case", "holds"), CONDITIONS.values(), ids=CONDITIONS)
def test_unless(conditions: str, case: Case, holds: bool) -> None:
    if conditions.startswith("{sender: alice@sender.example, tls"):
        holds = True  # unless blocks when any key holds
    case.rules = f"[{{name: r, unless: {conditions}, actions: [{S3}]}}]"
    plan = run(case)
    assert ran(plan) == ([] if holds else ["r"])


def test_rejected_message_has_no_data_reply_and_runs_nothing() -> None:
    plan = run(
        Case(
            f"[{{name: r, recipients: [a@example.com], actions: [{S3}]}}]", rcpt=("b@example.com",)
        )
    )
    assert plan.data_reply is None
    assert plan.rules == ()


# A walk that stopped at --max-mime-parts / --max-mime-depth (SPEC section 7).
BEYOND = MessageFacts(size=2048, attachments=(), mime_limit="more than 1000 MIME parts")
ONLY_PDF = "{attachment: {filename: '*.pdf'}}"
EXES = "{attachment: {filename: '*.exe'}}"
PLAIN = "{sender: alice@sender.example}"
A = ("a@example.com",)


@pytest.mark.parametrize(
    ("rules", "refused", "rcpt"),
    [
        pytest.param(f"[{{name: r, when: {ONLY_PDF}, actions: [{S3}]}}]", True, A, id="when"),
        pytest.param(f"[{{name: r, unless: {EXES}, actions: [{S3}]}}]", True, A, id="unless"),
        pytest.param(
            f"[{{name: a, recipients: [a@example.com], unless: {EXES}, actions: [{S3}]}},"
            f" {{name: b, recipients: [b@example.com], actions: [{S3}]}}]",
            True,
            ("a@example.com", "b@example.com"),
            id="one-recipient-of-two-needs-attachments",
        ),
        pytest.param(
            f"[{{name: a, recipients: [a@example.com], unless: {EXES}, actions: [{S3}]}},"
            f" {{name: b, recipients: [b@example.com], actions: [{S3}]}}]",
            False,
            ("b@example.com",),
            id="other-recipient-only",
        ),
        pytest.param(
            f"[{{name: r, when: {PLAIN}, actions: [{S3}]}}]", False, A, id="no-attachments"
        ),
        pytest.param(ALL, False, A, id="no-conditions"),
    ],
)
def test_beyond_mime_limits_refused_only_where_a_rule_needs_attachments(
    rules: str, refused: bool, rcpt: tuple[str, ...]
) -> None:
    plan = run(Case(rules, rcpt=rcpt, message=BEYOND))
    assert plan.data_reply is not None
    if refused:
        assert (plan.data_reply.code, plan.data_reply.status) == (554, "5.6.0")
        assert plan.outcome == "rejected"
        assert plan.rules == ()
        assert plan.refused is not None
        assert "more than 1000 MIME parts" in plan.refused
    else:
        assert plan.data_reply.is_success
        assert plan.refused is None
        assert ran(plan)
