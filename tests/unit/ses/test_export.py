"""`inbound.ses.export`: the exact SES JSON of every action, each problem kind, round trips."""

from __future__ import annotations

import json

import pytest
import yaml

from inbound.cli.main import main
from inbound.config.yamlsource import SourceMap
from inbound.rules.load import parse_rule_set, validate
from inbound.rules.model import RuleSet
from inbound.rules.ses_json import to_native
from inbound.ses.export import export_rule_set, ses_capabilities, ses_problems

EVERY_ACTION = """
version: 1
name: main
domains: [example.com, example.org]
filters:
  - {name: office, policy: allow, cidr: 198.51.100.0/24}
rules:
  - name: all-actions
    enabled: false
    recipients: [support@example.com, example.org, .example.org]
    tls_policy: require
    scan_enabled: true
    actions:
      - {type: s3, bucket: mail, prefix: support/,
         kms_key_arn: "arn:aws:kms:us-east-1:123456789012:key/k1",
         topic_arn: "arn:aws:sns:us-east-1:123456789012:t",
         iam_role_arn: "arn:aws:iam::123456789012:role/r"}
      - {type: bounce, smtp_reply_code: "550", status_code: "5.1.1", message: gone,
         sender: mailer-daemon@example.com, topic_arn: "arn:aws:sns:us-east-1:123456789012:t"}
      - {type: workmail, organization_arn:
           "arn:aws:workmail:us-east-1:123456789012:organization/m-1"}
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:f",
         invocation_type: request_response}
      - {type: add_header, name: X-Team, value: support}
      - {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:t", encoding: base64}
      - {type: connect,
         instance_arn: "arn:aws:connect:us-east-1:123456789012:instance/0123456789abcdef0123456789abcdef0123",
         iam_role_arn: "arn:aws:iam::123456789012:role/r"}
      - {type: stop}
  - name: plain
    actions: [{type: stop, topic_arn: "arn:aws:sns:us-east-1:123456789012:t"}]
"""

EXPECTED_RULES = [
    {
        "Name": "all-actions",
        "Enabled": False,
        "TlsPolicy": "Require",
        "ScanEnabled": True,
        "Recipients": ["support@example.com", "example.org", ".example.org"],
        "Actions": [
            {
                "S3Action": {
                    "BucketName": "mail",
                    "ObjectKeyPrefix": "support/",
                    "KmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k1",
                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                    "IamRoleArn": "arn:aws:iam::123456789012:role/r",
                }
            },
            {
                "BounceAction": {
                    "SmtpReplyCode": "550",
                    "StatusCode": "5.1.1",
                    "Message": "gone",
                    "Sender": "mailer-daemon@example.com",
                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                }
            },
            {
                "WorkmailAction": {
                    "OrganizationArn": "arn:aws:workmail:us-east-1:123456789012:organization/m-1"
                }
            },
            {
                "LambdaAction": {
                    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
                    "InvocationType": "RequestResponse",
                }
            },
            {"AddHeaderAction": {"HeaderName": "X-Team", "HeaderValue": "support"}},
            {
                "SNSAction": {
                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                    "Encoding": "Base64",
                }
            },
            {
                "ConnectAction": {
                    "InstanceARN": "arn:aws:connect:us-east-1:123456789012:instance/"
                    "0123456789abcdef0123456789abcdef0123",
                    "IAMRoleARN": "arn:aws:iam::123456789012:role/r",
                }
            },
            {"StopAction": {"Scope": "RuleSet"}},
        ],
    },
    {
        "Name": "plain",
        "Enabled": True,
        "TlsPolicy": "Optional",
        "ScanEnabled": False,
        "Recipients": [],
        "Actions": [
            {"StopAction": {"Scope": "RuleSet", "TopicArn": "arn:aws:sns:us-east-1:123456789012:t"}}
        ],
    },
]


def load(text: str) -> RuleSet:
    return parse_rule_set(text, "rules.yaml").rule_set


def rule_set_with(rule_yaml: str, *, rules: int = 1, filters: int = 0) -> RuleSet:
    extra = "".join(f"\n  - name: r{i}" for i in range(1, rules))
    filter_lines = "".join(
        f"\n  - {{name: f{i}, policy: block, cidr: 10.0.{i // 256}.{i % 256}/32}}"
        for i in range(filters)
    )
    text = (
        "version: 1\nname: main\ndomains: [example.com]\n"
        + (f"filters:{filter_lines}\n" if filters else "")
        + f"rules:\n  - {rule_yaml}{extra}\n"
    )
    return load(text)


def test_exact_json_of_every_action_type() -> None:
    exported = export_rule_set(load(EVERY_ACTION))
    assert exported["Rules"] == EXPECTED_RULES
    assert exported["Filters"] == [
        {"Name": "office", "IpFilter": {"Policy": "Allow", "Cidr": "198.51.100.0/24"}}
    ]
    assert ses_problems(load(EVERY_ACTION)) == []


def test_no_filters_key_without_filters() -> None:
    assert export_rule_set(rule_set_with("{name: a}")) == {
        "Rules": [
            {
                "Name": "a",
                "Enabled": True,
                "TlsPolicy": "Optional",
                "ScanEnabled": False,
                "Recipients": [],
                "Actions": [],
            }
        ]
    }


def test_export_then_to_native_gives_an_equal_rule_set() -> None:
    original = load(EVERY_ACTION)
    exported = export_rule_set(original) | {"Metadata": {"Name": original.name}}
    data, source, issues = to_native(json.loads(json.dumps(exported)), SourceMap("x"), stem="x")
    assert issues == []
    data["domains"] = list(original.domains)
    assert validate(RuleSet, data, source) == original


ACTIONS_11 = ", ".join(["{type: add_header, name: X-A, value: b}"] * 11)
RECIPIENTS_101 = ", ".join(f"u{i}@example.com" for i in range(101))


@pytest.mark.parametrize(
    ("rule", "rules", "filters", "expected"),
    [
        ("{name: a, when: {spam: [FAIL]}}", 1, 0, [("a", "extension", "when: spam")]),
        ("{name: a, unless: {sender: x@y.example}}", 1, 0, [("a", "extension", "unless: sender")]),
        ('{name: a, recipients: ["*@example.com"]}', 1, 0, [("a", "recipient-pattern", "*@")]),
        (
            '{name: a, recipients: ["re:a.*@example\\\\.com"]}',
            1,
            0,
            # the pattern as written in the YAML, not its Python repr (one backslash)
            [("a", "recipient-pattern", "patterns 're:a.*@example\\.com': SES")],
        ),
        (f"{{name: a, actions: [{ACTIONS_11}]}}", 1, 0, [("a", "limit", "11 actions")]),
        (f"{{name: a, recipients: [{RECIPIENTS_101}]}}", 1, 0, [("a", "limit", "101 recipients")]),
        ("{name: a}", 201, 0, [(None, "limit", "201 rules")]),
        ("{name: a}", 1, 101, [(None, "limit", "101 filters")]),
        ("{name: a, actions: [{type: stop}]}", 200, 100, []),
    ],
)
def test_each_problem_kind(
    rule: str, rules: int, filters: int, expected: list[tuple[str | None, str, str]]
) -> None:
    problems = ses_problems(rule_set_with(rule, rules=rules, filters=filters))
    assert [(p.rule, p.kind) for p in problems] == [(r, k) for r, k, _ in expected]
    for problem, (_, _, words) in zip(problems, expected, strict=True):
        assert words in problem.message


def test_names_ses_rejects() -> None:
    # The model already refuses such names; a model built without validation is still caught.
    rule_set = rule_set_with("{name: a}")
    bad_rule = rule_set.rules[0].model_copy(update={"name": "-bad"})
    bad = rule_set.model_copy(update={"name": "x" * 65, "rules": [bad_rule]})
    assert [(p.rule, p.kind) for p in ses_problems(bad)] == [(None, "name"), ("-bad", "name")]


@pytest.mark.parametrize(
    ("rule", "capability"),
    [
        ("{name: a, actions: [{type: stop}]}", "native"),
        ("{name: a, when: {dkim: [FAIL]}}", "needs the guard Lambda"),
        # SES cannot hold the glob, and a guard cannot narrow the recipients SES matched
        ('{name: a, recipients: ["*@example.com"]}', "local only"),
        # the SES Lambda event says nothing about TLS
        ("{name: a, when: {tls: true}}", "local only"),
        ("{name: a, when: {client_ip: [192.0.2.0/24]}}", "needs the guard Lambda"),
        ("{name: a, when: {size: {max: 10}}}", "local only"),
        ("{name: a, unless: {attachment: {filename: '*.exe'}}}", "local only"),
        (f"{{name: a, actions: [{ACTIONS_11}]}}", "local only"),
        # ten actions fit SES, but not with the guard Lambda in front of them
        (
            "{name: a, when: {spam: [FAIL]}, actions: ["
            + ", ".join(["{type: add_header, name: X-A, value: b}"] * 10)
            + "]}",
            "local only",
        ),
    ],
)
def test_capabilities(rule: str, capability: str) -> None:
    [found] = ses_capabilities(rule_set_with(rule))
    assert found.capability == capability


def test_cli_export(tmp_path, capsys) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(EVERY_ACTION)
    assert main(["ses", "export", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["Rules"] == EXPECTED_RULES

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "name": "main",
                "domains": ["example.com"],
                "rules": [{"name": "guarded", "when": {"spam": ["FAIL"]}}, {"name": "fine"}],
            }
        )
    )
    assert main(["ses", "export", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "rule 'guarded': uses the extension when: spam" in captured.err
    assert "'fine'" not in captured.err


def test_cli_check_ses(tmp_path, capsys) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nname: main\ndomains: [example.com]\nrules:\n"
        "  - {name: native}\n  - {name: guarded, when: {dkim: [FAIL]}}\n"
        "  - {name: local, when: {size: {min: 1}}}\n"
    )
    assert main(["check", "--ses", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ses: native: native\n" in out
    assert f"{path}: ses: guarded: needs the guard Lambda" in out
    assert f"{path}: ses: local: local only" in out
