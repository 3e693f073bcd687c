"""rules/ses-deploy.template.yaml, the CloudFormation of the README's deployment recipe:
valid CloudFormation (cfn-lint, which comes with moto[server], checks every resource property
and every Ref/GetAtt against AWS's resource schemas), handlers that exist, a receipt rule that
is what `inbound ses export` writes for the same rule, and permissions that cover it."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import yaml
from cfnlint.api import ManualArgs, lint  # type: ignore[import-untyped]

from inbound.rules.load import parse_rule_set
from inbound.ses import guard, handler
from inbound.ses.export import export_rule, ses_problems

TEMPLATE = Path(__file__).parents[3] / "rules" / "ses-deploy.template.yaml"
ACCOUNT, REGION, PARTITION = "123456789012", "us-east-1", "aws"


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (`!Ref x` is `{"Ref": "x"}`, ...)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref": value} if suffix == "Ref" else {f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _tag)


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    return loaded


def resources(kind: str) -> dict[str, Any]:
    return {k: v for k, v in template()["Resources"].items() if v["Type"] == kind}


PARAMETERS = {
    "RuleSetName": "inbound",
    "MailPrefix": "incoming/",
    "Recipients": ["example.com", ".example.com"],
    "ScanEnabled": "true",
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": PARTITION,
}
# What CloudFormation gives for a Ref or GetAtt of the template's resources, as the test says.
PHYSICAL: dict[str | tuple[str, str], str] = {
    "MailBucket": "stack-mailbucket-1",
    "RuleSet": "inbound",
    "HandlerFunction": "stack-HandlerFunction-1",
    "GuardFunction": "stack-GuardFunction-1",
    ("HandlerFunction", "Arn"): f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:stack-handler",
    ("MailBucket", "Arn"): "arn:aws:s3:::stack-mailbucket-1",
}


def resolve(value: Any) -> Any:
    """Substitute parameters and physical ids; Fn::If takes the condition's true branch."""
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        name = value["Ref"]
        return PARAMETERS[name] if name in PARAMETERS else PHYSICAL[name]
    if "Fn::GetAtt" in value:
        return PHYSICAL[tuple(value["Fn::GetAtt"])]
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        names: dict[str, object] = {
            ".".join(k) if isinstance(k, tuple) else k: v for k, v in PHYSICAL.items()
        }
        for name, found in {**PARAMETERS, **names}.items():
            text = text.replace("${" + name + "}", str(found))
        return text
    if "Fn::If" in value:
        return resolve(value["Fn::If"][1])
    return {k: resolve(v) for k, v in value.items()}


def test_cfn_lint_finds_nothing() -> None:
    assert lint(TEMPLATE.read_text(), config=ManualArgs(regions=[REGION])) == []


def test_the_handlers_are_the_functions_inbound_ships() -> None:
    functions = resources("AWS::Lambda::Function")
    handlers = {props["Properties"]["Handler"] for props in functions.values()}
    assert handlers == {"inbound.ses.lambda_handler", "inbound.ses.guard_handler"}
    for dotted in handlers:
        module, _, name = dotted.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))
    # The environment variables are the ones the handlers read.
    for props in functions.values():
        source = inspect.getsource(handler if "lambda" in props["Properties"]["Handler"] else guard)
        for variable in props["Properties"]["Environment"]["Variables"]:
            assert f'"{variable}"' in source, variable


def test_the_receipt_rule_is_what_export_writes_for_the_same_rule() -> None:
    [rule] = resources("AWS::SES::ReceiptRule").values()
    live = resolve(rule["Properties"]["Rule"])
    yaml_rule = f"""\
version: 1
name: inbound
domains: [example.com]
rules:
  - name: inbound
    recipients: {json.dumps(PARAMETERS["Recipients"])}
    scan_enabled: true
    actions:
      - {{type: s3, bucket: {PHYSICAL["MailBucket"]}, prefix: incoming/}}
      - {{type: lambda, function_arn: "{PHYSICAL["HandlerFunction", "Arn"]}"}}
"""
    rule_set = parse_rule_set(yaml_rule, "rules.yaml").rule_set
    assert ses_problems(rule_set) == []
    assert live == export_rule(rule_set.rules[0])
    # ... and inbound reads it back as SES JSON (what `inbound check` does with it).
    described = {"Metadata": {"Name": "inbound"}, "Rules": [live]}
    back = parse_rule_set(json.dumps(described), "ses.json", extra_domains=["example.com"])
    assert back.rule_set.rules == rule_set.rules


def test_ses_may_write_to_the_bucket_and_invoke_the_functions_of_this_account_only() -> None:
    [policy] = resources("AWS::S3::BucketPolicy").values()
    [statement] = resolve(policy["Properties"]["PolicyDocument"])["Statement"]
    assert statement["Principal"] == {"Service": "ses.amazonaws.com"}
    assert statement["Action"] == "s3:PutObject"
    assert statement["Resource"] == f"{PHYSICAL['MailBucket', 'Arn']}/*"
    rule_arn = f"arn:aws:ses:{REGION}:{ACCOUNT}:receipt-rule-set/inbound:receipt-rule/*"
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": rule_arn},
    }
    permissions = {
        resolve(p["Properties"]["FunctionName"]): resolve(p["Properties"])
        for p in resources("AWS::Lambda::Permission").values()
    }
    for permission in permissions.values():
        assert permission["Principal"] == "ses.amazonaws.com"
        assert permission["SourceAccount"] == ACCOUNT
        assert permission["Action"] == "lambda:InvokeFunction"
    assert permissions[PHYSICAL["HandlerFunction"]]["SourceArn"] == rule_arn
    # the guard serves blue-green sets too: NAME-<timestamp>
    rule_sets = f"arn:aws:ses:{REGION}:{ACCOUNT}:receipt-rule-set/*"
    assert {p["SourceArn"] for p in permissions.values()} == {rule_arn, rule_sets}
    [rule] = resources("AWS::SES::ReceiptRule").values()
    assert set(rule["DependsOn"]) == {"MailBucketPolicy", "HandlerPermission"}


def test_the_handler_may_read_the_messages_and_keep_its_state() -> None:
    role = template()["Resources"]["HandlerRole"]["Properties"]
    [policy] = role["Policies"]
    statements = resolve(policy["PolicyDocument"])["Statement"]
    allowed = {
        (action, s["Resource"])
        for s in statements
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    bucket = PHYSICAL["MailBucket", "Arn"]
    assert {("s3:GetObject", f"{bucket}/*"), ("s3:PutObject", f"{bucket}/*")} <= allowed
    assert ("s3:ListBucket", bucket) in allowed
