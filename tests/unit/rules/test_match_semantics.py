"""SPEC section 4: `re:` in `subject` and `header` is searched in the decoded value (`^…$`
anchors a whole-value match), globs and plain values are whole-value, and address patterns
(`sender`, `from`, `recipients`) keep matching the whole address."""

from __future__ import annotations

import pytest

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Header, MessageFacts
from inbound.core.verdicts import Verdicts
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.rules.model import RuleSet

MESSAGE = MessageFacts(
    size=100,
    headers=(
        Header("From", "Alice <alice@sender.example>", "Alice <alice@sender.example>"),
        Header("Subject", "=?utf-8?q?Fwd:_Your_Invoice_42_is_due?=", "Fwd: Your Invoice 42 is due"),
        Header("X-Mailer", "Acme Mailer 7.1 (build 12)", "Acme Mailer 7.1 (build 12)"),
    ),
    from_addresses=("alice@sender.example",),
    subject="Fwd: Your Invoice 42 is due",
)


def applies(when: dict[str, object], *, mail_from: str = "alice@sender.example") -> bool:
    rule_set = RuleSet.model_validate(
        {
            "name": "t",
            "domains": ["example.com"],
            "rules": [{"name": "r", "when": when, "actions": [{"type": "stop"}]}],
        }
    )
    plan = evaluate(
        CompiledRuleSet.build(rule_set),
        message_id="0" * 40,
        connection=Connection.of("203.0.113.5", "mx.sender.example", tls=False),
        envelope=Envelope(mail_from, ("user@example.com",)),
        message=MESSAGE,
        verdicts=Verdicts(),
        lambda_results=results_by_function({}),
    )
    return [r.name for r in plan.rules] == ["r"]


TEXT: dict[str, tuple[str, bool]] = {
    # re: is searched, as Postfix header_checks, Sieve :regex and Mailgun's match_header
    "regex_found_inside": (r"re:invoice \d+", True),
    "regex_found_case_insensitive": (r"re:INVOICE", True),
    "regex_not_found": (r"re:receipt", False),
    "regex_anchored_start_found": (r"re:^fwd:", True),
    "regex_anchored_start_not_at_start": (r"re:^your", False),
    "regex_anchored_end_found": (r"re:is due$", True),
    "regex_anchored_end_not_at_end": (r"re:invoice$", False),
    "regex_anchored_whole_value": (r"re:^fwd: your invoice \d+ is due$", True),
    "regex_anchored_whole_value_partial": (r"re:^your invoice \d+$", False),
    # globs and plain values stay whole-value
    "glob_whole_value": ("*invoice*", True),
    "glob_is_not_searched": ("invoice*", False),
    "glob_question_mark": ("fwd: your invoice ?? is due", True),
    "plain_whole_value": ("fwd: your invoice 42 is due", True),
    "plain_is_not_searched": ("invoice 42", False),
}


@pytest.mark.parametrize(("pattern", "holds"), TEXT.values(), ids=TEXT)
def test_subject(pattern: str, holds: bool) -> None:
    assert applies({"subject": pattern}) is holds


HEADER: dict[str, tuple[str, bool]] = {
    "regex_found_inside": (r"re:mailer \d", True),
    "regex_anchored_not_at_start": (r"re:^mailer", False),
    "regex_anchored_whole_value": (r"re:^acme mailer [\d.]+ \(build \d+\)$", True),
    "glob_whole_value": ("acme*", True),
    "glob_is_not_searched": ("mailer*", False),
    "plain_is_not_searched": ("acme mailer", False),
}


@pytest.mark.parametrize(("pattern", "holds"), HEADER.values(), ids=HEADER)
def test_header(pattern: str, holds: bool) -> None:
    assert applies({"header": {"X-Mailer": pattern}}) is holds


ADDRESSES: dict[str, tuple[str, str, bool]] = {
    # Address patterns keep a whole-address match: a regex that is only found inside is no match.
    "sender_regex_inside_only": ("sender", "re:alice", False),
    "sender_regex_domain_inside_only": ("sender", r"re:sender\.example", False),
    "sender_regex_whole": ("sender", r"re:alice@.*\.example", True),
    "sender_glob_whole": ("sender", "alice@*", True),
    "from_regex_inside_only": ("from", "re:alice", False),
    "from_regex_whole": ("from", r"re:[a-z]+@sender\.example", True),
    "from_glob_not_searched": ("from", "alice*example.com", False),
}


@pytest.mark.parametrize(("key", "pattern", "holds"), ADDRESSES.values(), ids=ADDRESSES)
def test_address_patterns_match_the_whole_address(key: str, pattern: str, holds: bool) -> None:
    assert applies({key: pattern}) is holds


def test_recipient_regex_matches_the_whole_address() -> None:
    rule_set = RuleSet.model_validate(
        {
            "name": "t",
            "domains": ["example.com"],
            "rules": [{"name": "r", "recipients": ["re:user"], "actions": [{"type": "stop"}]}],
        }
    )
    rules = CompiledRuleSet.build(rule_set)
    assert rules.index.rules_for("user@example.com") == ()
    assert rules.index.rules_for("x@user.example.com") == ()
