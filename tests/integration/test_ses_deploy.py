"""The README's deployment on moto server: rules/ses-deploy.template.yaml created by moto's
CloudFormation, then `inbound ses apply --blue-green --lower-extensions` onto what it made,
then the guard answering the event SES would send it.

moto's CloudFormation has no AWS::SES::* (nor AWS::S3::BucketPolicy) resources and skips
them; tests/unit/ses/test_deploy_template.py shows the template's receipt rule is the one
`inbound ses export` writes for the YAML below, which is applied here through SES's API (moto
checks that the bucket and the functions exist). The functions' code never runs in moto, so
the guard is called directly, as Lambda would call it.

The moto server here is this module's own, with moto's default Lambda backend: SES looks the
functions up there, while CloudFormation (moto >= 5.2.2) creates them in the lambda-simple
backend that the shared server selects (tests.integration.daemons.own_moto). No function is
invoked, so Docker is never needed."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from inbound.cli.main import main
from inbound.ses import guard_handler
from tests.conftest import FIXTURES
from tests.integration.daemons import own_moto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """Overrides the session's moto server (conftest) for this module's `aws`."""
    yield from own_moto(lambda_simple=False)


TEMPLATE = Path(__file__).parents[2] / "rules" / "ses-deploy.template.yaml"


def create_stack(name: str) -> dict[str, str]:
    code_bucket = f"code-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=code_bucket)
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:  # the recipe's zip, in short
        archive.writestr("inbound/__init__.py", "")
        archive.writestr("rules.yaml", "")
    s3.put_object(Bucket=code_bucket, Key="inbound.zip", Body=package.getvalue())
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": "CodeBucket", "ParameterValue": code_bucket},
            {"ParameterKey": "CodeKey", "ParameterValue": "inbound.zip"},
            {"ParameterKey": "Recipients", "ParameterValue": "example.com"},
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    [stack] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    made = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
    assert {r["LogicalResourceId"] for r in made} >= {
        "MailBucket",
        "HandlerRole",
        "HandlerFunction",
        "HandlerPermission",
        "GuardRole",
        "GuardFunction",
        "GuardPermission",
    }
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def test_deploy_the_stack_then_the_rules_then_the_guard_answers(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    name = f"inbound-{uuid.uuid4().hex[:8]}"
    outputs = create_stack(name)
    boto3.client("s3").head_bucket(Bucket=outputs["MailBucketName"])

    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""\
version: 1
name: {name}
domains: [example.com]
rules:
  - name: spam
    recipients: [recipient@example.com]
    scan_enabled: true
    when: {{spam: [FAIL]}}
    actions:
      - {{type: s3, bucket: {outputs["MailBucketName"]}, prefix: spam/}}
      - {{type: stop}}
  - name: inbound
    recipients: [example.com]
    scan_enabled: true
    actions:
      - {{type: s3, bucket: {outputs["MailBucketName"]}, prefix: incoming/}}
      - {{type: lambda, function_arn: "{outputs["HandlerFunctionArn"]}"}}
""")
    guard_arn = outputs["GuardFunctionArn"]
    # Start with no active set (the first blue-green apply then creates its set instead of
    # cloning one another test left active on this server).
    boto3.client("ses").set_active_receipt_rule_set()
    args = ["ses", "apply", str(rules), "--blue-green", "--lower-extensions", guard_arn]
    assert main([*args, "--test-rate", "1000"]) == 0
    assert capsys.readouterr().out.endswith("changes applied\n")
    deployed = boto3.client("ses").describe_active_receipt_rule_set()["Rules"]
    assert deployed[0]["Actions"][0] == {
        "LambdaAction": {"FunctionArn": guard_arn, "InvocationType": "RequestResponse"}
    }
    assert deployed[1]["Actions"][1]["LambdaAction"]["FunctionArn"] == outputs["HandlerFunctionArn"]

    # The event SES sends the guard for the spam rule (the guard's INBOUND_RULES: the same YAML).
    monkeypatch.setenv("INBOUND_RULES", str(rules))
    event = json.loads((FIXTURES / "ses" / "lambda_action_event.json").read_text())
    receipt = event["Records"][0]["ses"]["receipt"]
    receipt["recipients"] = ["recipient@example.com"]
    receipt["action"] = {
        "type": "Lambda",
        "functionArn": guard_arn,
        "invocationType": "RequestResponse",
    }
    assert guard_handler(event, None) == {"disposition": "STOP_RULE"}
    receipt["spamVerdict"] = {"status": "FAIL"}
    assert guard_handler(event, None) == {"disposition": "CONTINUE"}
