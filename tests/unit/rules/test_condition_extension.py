"""Extension proof (issue 12): conditions added in this test module, without editing the
package, are compiled, evaluated, traced and classified for the SES guard.

Two rows are added to a copy of the package's table, and their fields to a subclass of the
`Conditions` model: `list_id` (RFC 2919 List-Id searched like a header; the guard reads it from
`mail.headers`) and `max_attachments` (reads every part, so it is local only). Nothing is
registered anywhere: the table is a value handed to `CompiledRuleSet.build`, `ses_problems`,
`ses_capabilities` and `guard_facts`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import pytest

from inbound.cli.render import plan_trace
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Attachment, Header, MessageFacts, Reads
from inbound.core.plan import Plan
from inbound.core.verdicts import Verdicts
from inbound.message.read import need_for
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.condition_table import (
    CONDITIONS,
    ConditionRow,
    EventPart,
    Guarded,
    LocalOnly,
)
from inbound.rules.conditions import Check, any_text
from inbound.rules.evaluate import evaluate, message_keys, results_by_function, unmet_checks
from inbound.rules.model import Conditions, Patterns, Rule, RuleSet
from inbound.ses.event import Receipt, parse_event
from inbound.ses.export import Guard, ses_capabilities, ses_problems
from inbound.ses.guard import GuardError, guard_facts
from tests.conftest import FIXTURES


class ListConditions(Conditions):
    list_id: Patterns | None = None
    max_attachments: int | None = None


def list_id(key: str, patterns: list[str]) -> Sequence[Check]:
    test = any_text(patterns, search=True)
    return (
        Check(
            key,
            lambda f: any(test(v) for v in f.message.header_values("List-Id")),
            lambda f: ", ".join(f.message.header_values("List-Id")) or "no List-Id",
        ),
    )


def max_attachments(key: str, most: int) -> Sequence[Check]:
    return (
        Check(
            key,
            lambda f: len(f.message.attachments) <= most,
            lambda f: f"{len(f.message.attachments)} attachments",
        ),
    )


TABLE = CONDITIONS.extended(
    ConditionRow(
        "list_id",
        list_id,
        Reads.HEADERS,
        Guarded(EventPart.HEADERS, "the List-Id header in mail.headers"),
    ),
    ConditionRow(
        "max_attachments",
        max_attachments,
        Reads.PARTS,
        LocalOnly("the SES Lambda event carries no message body"),
    ),
)
STOP = {"type": "stop"}


def rule(name: str, recipient: str, when: dict[str, Any]) -> Rule:
    # A `Rule` takes the subclass where it declares `Conditions`: no Rule or RuleSet subclass.
    data = {"name": name, "recipients": [recipient], "actions": [STOP]}
    return Rule.model_validate({**data, "when": ListConditions.model_validate(when)})


RULE_SET = RuleSet(
    name="lists",
    domains=["example.com"],
    rules=[
        rule("announce", "list@example.com", when={"list_id": r"re:<announce\.example\.org>"}),
        rule("few-files", "files@example.com", when={"max_attachments": 1}),
    ],
)


def message(list_header: str | None = None, attachments: int = 0, **extra: Any) -> MessageFacts:
    headers = (Header("List-Id", list_header, list_header),) if list_header else ()
    files = tuple(Attachment(f"f{i}.pdf", "application/pdf") for i in range(attachments))
    return MessageFacts(size=100, headers=headers, attachments=files, **extra)


def run(rcpt: str, facts: MessageFacts) -> tuple[Plan, CompiledRuleSet]:
    rules = CompiledRuleSet.build(RULE_SET, TABLE)
    plan = evaluate(
        rules,
        message_id="0" * 40,
        connection=Connection.of("203.0.113.5"),
        envelope=Envelope("a@sender.example", (rcpt,)),
        message=facts,
        verdicts=Verdicts(),
        lambda_results=results_by_function({}),
    )
    return plan, rules


@pytest.mark.parametrize(
    ("rcpt", "facts", "applies", "why_not"),
    [
        ("list@example.com", message("Announcements <announce.example.org>"), True, ""),
        (
            "list@example.com",
            message("Other <other.example.org>"),
            False,
            "when list_id does not hold (saw Other <other.example.org>)",
        ),
        ("list@example.com", message(), False, "when list_id does not hold (saw no List-Id)"),
        ("files@example.com", message(attachments=1), True, ""),
        (
            "files@example.com",
            message(attachments=2),
            False,
            "when max_attachments does not hold (saw 2 attachments)",
        ),
    ],
    ids=["list_id_found", "list_id_other", "list_id_missing", "one_file", "two_files"],
)
def test_compiled_evaluated_and_traced(
    rcpt: str, facts: MessageFacts, applies: bool, why_not: str
) -> None:
    plan, rules = run(rcpt, facts)
    assert [r.name for r in plan.rules] == (
        ["announce" if rcpt.startswith("list") else "few-files"] if applies else []
    )
    trace = plan_trace(plan, rules)
    if why_not:
        assert [s.reason for s in plan.skipped] == [why_not]
        assert f"skipped: {why_not}" in trace


def test_what_is_read_follows_the_new_rows() -> None:
    rules = CompiledRuleSet.build(RULE_SET, TABLE)
    assert need_for(message_keys(rules, ["list@example.com"])) == "headers"
    assert need_for(message_keys(rules, ["files@example.com"])) == "everything"
    # a new row that reads every part is refused, like `attachment`, beyond the MIME limits
    plan, _ = run("files@example.com", message(mime_limit="more than 1000 MIME parts"))
    assert plan.data_reply is not None
    assert (plan.data_reply.code, plan.data_reply.status) == (554, "5.6.0")


def test_classified_for_the_ses_guard() -> None:
    capabilities = [str(c) for c in ses_capabilities(RULE_SET, TABLE)]
    assert capabilities == [
        "announce: needs the guard Lambda (when: list_id (read from the List-Id header in "
        "mail.headers))",
        "few-files: local only (when: max_attachments: the SES Lambda event carries no message "
        "body, so no guard can decide it)",
    ]
    # `ses export` without a guard: both refused, only the first one can be lowered
    problems = [p.message for p in ses_problems(RULE_SET, None, TABLE)]
    assert len(problems) == 2
    assert "--lower-extensions" in problems[0]
    assert "--lower-extensions" not in problems[1]
    # with a guard: only the local one is left
    guard = Guard("arn:aws:lambda:us-east-1:123456789012:function:guard")
    assert [(p.rule, p.message) for p in ses_problems(RULE_SET, guard, TABLE)] == [
        (
            "few-files",
            "the guard Lambda cannot decide when: max_attachments: the SES Lambda event "
            "carries no message body",
        )
    ]


def receipt(list_header: str | None, *, truncated: bool = False) -> Receipt:
    data = copy.deepcopy(json.loads((FIXTURES / "ses" / "lambda_action_event.json").read_text()))
    mail = data["Records"][0]["ses"]["mail"]
    if list_header is not None:
        mail["headers"].append({"name": "List-Id", "value": list_header})
    mail["headersTruncated"] = truncated
    found = parse_event(data)
    assert found is not None
    return found


def test_the_guard_decides_the_new_condition_from_the_event() -> None:
    rules = CompiledRuleSet.build(RULE_SET, TABLE)
    announce = rules.rules[0]
    facts = guard_facts(receipt("Announcements <announce.example.org>"), [announce], TABLE)
    assert unmet_checks(announce, facts) == []
    facts = guard_facts(receipt(None), [announce], TABLE)
    assert [c.key for _, c in unmet_checks(announce, facts)] == ["list_id"]
    # it reads mail.headers, so a truncated list cannot decide it
    with pytest.raises(GuardError, match="truncated"):
        guard_facts(receipt("x", truncated=True), [announce], TABLE)


def test_the_package_table_is_untouched() -> None:
    assert "list_id" not in CONDITIONS.keys
    assert "list_id" not in Conditions.model_fields
