"""`inbound ses apply --blue-green` against a real moto server (clone, update and create on
the clone, the switch, the clean-up of old clones), and against botocore's Stubber with the
exact requests what moto cannot do: delete and reorder rules, and create a rule with a Lambda
action (moto's SES looks functions up in the Docker Lambda backend, not in the lambda-simple
one its server runs here, so it refuses every function), hence the guarded deployment."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from inbound.cli.main import main
from inbound.rules.load import parse_rule_set
from inbound.rules.model import RuleSet
from inbound.ses import bluegreen, guard_handler, live
from inbound.ses.export import export_rule
from tests.conftest import FIXTURES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

STAMP = r"\d{8}T\d{6}Z"
LAST = "  - {name: last, actions: [{type: stop}]}\n"


def rules_text(name: str, *, value: str = "support", extra: str = "") -> str:
    return f"""\
version: 1
name: {name}
domains: [example.com]
rules:
  - name: support
    recipients: [support@example.com]
    actions:
      - {{type: add_header, name: X-Team, value: {value}}}
      - {{type: s3, bucket: mail, prefix: support/}}
  - name: catch-all
    recipients: [example.com]
    actions:
      - {{type: s3, bucket: mail, prefix: all/}}
{extra}"""


def rule_set(text: str) -> RuleSet:
    return parse_rule_set(text, "rules.yaml").rule_set


@pytest.fixture
def aws(aws: str) -> str:
    """The shared AWS configuration (conftest), with the bucket the rules name."""
    boto3.client("s3").create_bucket(Bucket="mail")
    return aws


def active() -> dict[str, Any]:
    found: dict[str, Any] = boto3.client("ses").describe_active_receipt_rule_set()
    return found


def test_blue_green_builds_a_clone_and_switches_to_it(
    aws: str, tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"bg-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text(base))
    assert main(["ses", "apply", str(path), "--test-rate", "1000"]) == 0
    capsys.readouterr()
    before = boto3.client("ses").describe_receipt_rule_set(RuleSetName=base)["Rules"]

    path.write_text(rules_text(base, value="help", extra=LAST))
    assert main(["ses", "apply", str(path), "--blue-green", "--test-rate", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    new = active()["Metadata"]["Name"]
    assert re.fullmatch(rf"{base}-{STAMP}", new)
    assert lines == [
        f"clone rule set {base} to {new}",
        "update rule support (Actions)",
        "create rule last after catch-all",
        f"activate rule set {new} (was {base})",
        "4 changes applied",
    ]
    assert [r["Name"] for r in active()["Rules"]] == ["support", "catch-all", "last"]
    header = active()["Rules"][0]["Actions"][0]["AddHeaderAction"]
    assert header == {"HeaderName": "X-Team", "HeaderValue": "help"}
    # The set mail met until the switch was never touched: a rollback is one call away.
    assert boto3.client("ses").describe_receipt_rule_set(RuleSetName=base)["Rules"] == before

    assert main(["ses", "plan", str(path), "--blue-green", "--test-rate", "1000"]) == 0
    assert capsys.readouterr().out == f"no changes: the active rule set {new} equals {path}\n"
    assert main(["ses", "apply", str(path), "--blue-green", "--test-rate", "1000"]) == 0
    assert capsys.readouterr().out == f"no changes: the active rule set {new} equals {path}\n"
    assert active()["Metadata"]["Name"] == new

    # The next switch, with --keep 0, deletes the clone it replaces (never the original set).
    monkeypatch.setattr(bluegreen, "datetime", FixedClock)
    path.write_text(rules_text(base, value="third", extra=LAST))
    args = ["ses", "apply", str(path), "--blue-green", "--keep", "0", "--test-rate", "1000"]
    assert main(args) == 0
    third = f"{base}-20260301T120000Z"
    assert capsys.readouterr().out.splitlines() == [
        f"clone rule set {new} to {third}",
        "update rule support (Actions)",
        f"activate rule set {third} (was {new})",
        f"delete rule set {new}",
        "4 changes applied",
    ]


def test_clean_up_keeps_the_newest_inactive_clones_only(aws: str) -> None:
    base = f"keep-{uuid.uuid4().hex[:8]}"
    client = boto3.client("ses")
    clones = [f"{base}-2026010{day}T000000Z" for day in range(1, 5)]
    for name in [base, f"{base}x-20260101T000000Z", *clones]:
        client.create_receipt_rule_set(RuleSetName=name)
    client.set_active_receipt_rule_set(RuleSetName=clones[-1])
    ses = live.Throttled(client, rate=1000)

    changes = bluegreen.cleanup_changes(ses, base, active=clones[-1], keep=1)
    assert [c.request for c in changes] == [{"RuleSetName": n} for n in clones[:2]]
    live.apply(ses, changes)
    left = {s["Name"] for s in client.list_receipt_rule_sets()["RuleSets"]}
    assert {base, f"{base}x-20260101T000000Z", clones[2], clones[3]} <= left
    assert not set(clones[:2]) & left
    assert bluegreen.cleanup_changes(ses, base, active=clones[-1], keep=0)[0].request == {
        "RuleSetName": clones[2]
    }


# -- what moto does not implement: botocore's Stubber ----------------------------------------


def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client(
        "ses",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",  # noqa: S106
    )
    return client, Stubber(client)


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NEW = "main-20260301T120000Z"
SPAM_RULE = """\
  - name: spam
    recipients: [recipient@example.com]
    scan_enabled: true
    when: {spam: [FAIL]}
    actions: [{type: s3, bucket: mail, prefix: spam/}, {type: stop}]
"""


class FixedClock:
    """Stands for `datetime` in `bluegreen`: the clone is named after NOW."""

    @staticmethod
    def now(_tz: object) -> datetime:
        return NOW


def test_exact_requests_of_a_blue_green_apply_with_delete_and_reorder() -> None:
    client, stubber = stubbed()
    live_set = rule_set(rules_text("main", extra="  - {name: gone, actions: [{type: stop}]}\n"))
    desired = rule_set(
        rules_text("main").replace(
            "  - name: support", "  - name: zz\n    actions: []\n  - name: support"
        )
    )
    described = {
        "Metadata": {"Name": "main-20260201T000000Z"},
        "Rules": [export_rule(r) for r in live_set.rules],
    }
    stubber.add_response("describe_active_receipt_rule_set", described, {})
    stubber.add_response(
        "clone_receipt_rule_set",
        {},
        {"RuleSetName": NEW, "OriginalRuleSetName": "main-20260201T000000Z"},
    )
    stubber.add_response("delete_receipt_rule", {}, {"RuleSetName": NEW, "RuleName": "gone"})
    zz = export_rule(desired.rules[0])
    stubber.add_response("create_receipt_rule", {}, {"RuleSetName": NEW, "Rule": zz})
    stubber.add_response("set_active_receipt_rule_set", {}, {"RuleSetName": NEW})
    with stubber:
        ses = live.Throttled(client, rate=1000)
        planned = bluegreen.plan_blue_green(ses, desired, now=NOW)
        assert [str(c) for c in planned.changes] == [
            f"clone rule set main-20260201T000000Z to {NEW}",
            "delete rule gone",
            "create rule zz at the beginning",
            f"activate rule set {NEW} (was main-20260201T000000Z)",
        ]
        live.apply(ses, planned.changes)
    stubber.assert_no_pending_responses()


def test_a_failure_before_the_switch_leaves_the_active_set_and_removes_the_clone(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys
) -> None:
    client, stubber = stubbed()
    monkeypatch.setattr(live, "ses_client", lambda: client)
    monkeypatch.setattr(
        bluegreen, "datetime", type("Fixed", (), {"now": staticmethod(lambda _tz: NOW)})
    )
    current = rule_set(rules_text("main"))
    described = {"Metadata": {"Name": "main"}, "Rules": [export_rule(r) for r in current.rules]}
    stubber.add_response("describe_active_receipt_rule_set", described, {})
    stubber.add_response(
        "clone_receipt_rule_set", {}, {"RuleSetName": NEW, "OriginalRuleSetName": "main"}
    )
    stubber.add_client_error(
        "update_receipt_rule", "InvalidS3Configuration", "Could not write to bucket: mail"
    )
    stubber.add_response("delete_receipt_rule_set", {}, {"RuleSetName": NEW})
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text("main", value="help"))
    with stubber:
        assert main(["ses", "apply", str(path), "--blue-green", "--test-rate", "1000"]) == 2
    stubber.assert_no_pending_responses()
    err = capsys.readouterr().err
    assert "update_receipt_rule: InvalidS3Configuration" in err
    assert f"main is still active; the unfinished {NEW} was deleted" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("main", "main-20260301T120000Z"),
        ("a" * 64, "a" * 47 + "-20260301T120000Z"),
        ("ab-" + "c" * 44 + ".d", "ab-" + "c" * 44 + "-20260301T120000Z"),
    ],
)
def test_clone_names_fit_ses(base: str, expected: str) -> None:
    name = bluegreen.clone_name(base, NOW)
    assert name == expected
    assert len(name) <= 64
    assert bluegreen.is_clone_of(base, name)
    assert not bluegreen.is_clone_of("other", name)


def test_a_guarded_rule_deployed_blue_green_then_the_guard_answers_ses(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys
) -> None:
    client, stubber = stubbed()
    monkeypatch.setattr(live, "ses_client", lambda: client)
    monkeypatch.setattr(bluegreen, "datetime", FixedClock)
    arn = "arn:aws:lambda:us-east-1:123456789012:function:inbound-guard"
    path = tmp_path / "rules.yaml"
    path.write_text(rules_text("main", extra=SPAM_RULE))
    expected = [export_rule(r) for r in rule_set(path.read_text()).rules]
    expected[2]["Actions"].insert(  # type: ignore[attr-defined]
        0, {"LambdaAction": {"FunctionArn": arn, "InvocationType": "RequestResponse"}}
    )
    stubber.add_response("describe_active_receipt_rule_set", {}, {})  # nothing is active
    stubber.add_response("create_receipt_rule_set", {}, {"RuleSetName": NEW})
    after: str | None = None
    for rule in expected:
        request = {"RuleSetName": NEW, "Rule": rule, **({"After": after} if after else {})}
        stubber.add_response("create_receipt_rule", {}, request)
        after = str(rule["Name"])
    stubber.add_response("set_active_receipt_rule_set", {}, {"RuleSetName": NEW})
    stubber.add_response("list_receipt_rule_sets", {"RuleSets": [{"Name": NEW}]}, {})
    args = ["ses", "apply", str(path), "--blue-green", "--lower-extensions", arn]
    with stubber:
        assert main([*args, "--test-rate", "1000"]) == 0
    stubber.assert_no_pending_responses()
    assert capsys.readouterr().out.splitlines()[0] == f"create rule set {NEW}"

    # What SES then sends the guard for that rule: the recipients it matched, the action.
    monkeypatch.setenv("INBOUND_RULES", str(path))
    event = json.loads((FIXTURES / "ses" / "lambda_action_event.json").read_text())
    receipt = event["Records"][0]["ses"]["receipt"]
    receipt["recipients"] = ["recipient@example.com"]
    receipt["action"] = {"type": "Lambda", "functionArn": arn, "invocationType": "RequestResponse"}
    assert guard_handler(event, None) == {"disposition": "STOP_RULE"}  # spam PASS
    receipt["spamVerdict"] = {"status": "FAIL"}
    assert guard_handler(event, None) == {"disposition": "CONTINUE"}
