"""`--lower-extensions`: which conditions the guard Lambda takes, how rules get it, and when a
shared guard function could not tell two rules apart."""

from __future__ import annotations

import pytest

from inbound.cli.main import main
from inbound.rules.load import parse_rule_set
from inbound.rules.model import Conditions, RuleSet
from inbound.ses.export import (
    GUARD_KEYS,
    LOCAL_ONLY_KEYS,
    Guard,
    check_guard_arn,
    export_rule_set,
    recipients_overlap,
    ses_problems,
)

SHARED = Guard("arn:aws:lambda:us-east-1:123456789012:function:guard")
PER_RULE = Guard("arn:aws:lambda:us-east-1:123456789012:function:guard-{rule}")


def load(rules: str) -> RuleSet:
    text = f"version: 1\nname: main\ndomains: [example.com, example.org]\nrules:\n{rules}"
    return parse_rule_set(text, "rules.yaml").rule_set


def test_every_condition_is_either_guarded_or_local_only() -> None:
    keys = {info.alias or name for name, info in Conditions.model_fields.items()}
    assert set(GUARD_KEYS) | set(LOCAL_ONLY_KEYS) == keys
    assert not set(GUARD_KEYS) & set(LOCAL_ONLY_KEYS)


def test_the_guard_goes_first_only_in_rules_with_conditions() -> None:
    rule_set = load(
        "  - {name: plain, actions: [{type: stop}]}\n"
        "  - {name: spam, unless: {spam: [PASS]}, actions: [{type: stop}]}\n"
    )
    rules = export_rule_set(rule_set, PER_RULE)["Rules"]
    assert isinstance(rules, list)
    assert rules[0]["Actions"] == [{"StopAction": {"Scope": "RuleSet"}}]
    assert rules[1]["Actions"] == [
        {
            "LambdaAction": {
                "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:guard-spam",
                "InvocationType": "RequestResponse",
            }
        },
        {"StopAction": {"Scope": "RuleSet"}},
    ]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ([], ["x@example.com"], True),
        (["x@example.com"], ["X@Example.com"], True),
        (["x@example.com"], ["x+tag@example.com"], True),
        (["x@example.com"], ["y@example.com"], False),
        (["example.com"], ["x@example.com"], True),
        (["example.com"], ["example.org"], False),
        ([".example.com"], ["example.com"], False),
        ([".example.com"], ["a.example.com"], True),
        ([".example.com"], ["x@b.a.example.com"], True),
        ([".a.example.com"], [".example.com"], True),
        (["x@example.com", "example.org"], ["y@example.org"], True),
    ],
)
def test_recipients_overlap(a: list[str], b: list[str], overlap: bool) -> None:
    assert recipients_overlap(a, b) is overlap
    assert recipients_overlap(b, a) is overlap


COLLIDING = (
    "  - {name: v, scan_enabled: true, when: {virus: [FAIL]}, actions: [{type: stop}]}\n"
    "  - {name: s, scan_enabled: true, when: {spam: [FAIL]}, actions: [{type: stop}]}\n"
)


def test_a_shared_guard_refuses_rules_it_could_not_tell_apart() -> None:
    [problem] = ses_problems(load(COLLIDING), SHARED)
    assert (problem.rule, problem.kind) == ("s", "guard")
    assert "'v' and 's'" in problem.message
    assert ses_problems(load(COLLIDING), PER_RULE) == []
    # the same conditions give the same answer whichever rule invoked the guard
    same = COLLIDING.replace("spam: [FAIL]", "virus: [FAIL]")
    assert ses_problems(load(same), SHARED) == []
    # recipients that cannot meet tell them apart
    apart = COLLIDING.replace("{name: s,", "{name: s, recipients: [example.org],").replace(
        "{name: v,", "{name: v, recipients: [example.com],"
    )
    assert ses_problems(load(apart), SHARED) == []


def test_a_rule_name_a_lambda_name_cannot_hold() -> None:
    rule_set = load("  - {name: a.b, when: {spf: [FAIL]}}\n  - {name: c.d}\n")
    problems = ses_problems(rule_set, PER_RULE)
    assert [(p.rule, p.kind) for p in problems] == [("a.b", "guard")]
    assert ses_problems(rule_set, SHARED) == []


def test_ten_actions_leave_no_room_for_the_guard() -> None:
    actions = ", ".join(["{type: add_header, name: X-A, value: b}"] * 10)
    rule_set = load(f"  - {{name: a, when: {{spf: [FAIL]}}, actions: [{actions}]}}\n")
    [problem] = ses_problems(rule_set, SHARED)
    assert problem.message == "11 actions with the guard Lambda: SES allows at most 10 per rule"


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:lambda:us-east-1:123456789012:function:guard",
        "arn:aws:lambda:us-east-1:123456789012:function:guard:live",
        "arn:aws:lambda:us-east-1:123456789012:function:guard:{rule}",
        "arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:g-{rule}",
    ],
)
def test_guard_arns_accepted(arn: str) -> None:
    assert check_guard_arn(arn) is None


@pytest.mark.parametrize(
    "arn",
    [
        "guard",
        "arn:aws:sns:us-east-1:123456789012:guard",
        "arn:aws:lambda:us-east-1:123456789012:function:guard:{name}",
        "arn:aws:lambda:us-east-1:123456789012:function:guard with space",
    ],
)
def test_a_bad_guard_arn_is_bad_input(arn: str, tmp_path, capsys) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nname: main\ndomains: [example.com]\nrules: []\n")
    assert main(["ses", "export", str(path), "--lower-extensions", arn]) == 2
    err = capsys.readouterr().err
    assert "--lower-extensions" in err
    assert "Traceback" not in err
