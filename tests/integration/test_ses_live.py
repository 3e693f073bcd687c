"""`inbound ses import/plan/apply` against a real moto server, and the calls moto does not
implement (delete, reorder, filters) against botocore's Stubber with the exact requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from inbound.cli.main import main
from inbound.rules.load import parse_rule_set
from inbound.rules.model import RuleSet
from inbound.ses import live
from inbound.ses.export import export_rule

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RULES = """\
version: 1
name: main
domains: [example.com, example.org]
rules:
  - name: drop-spam
    recipients: [example.com]
    scan_enabled: true
    tls_policy: require
    actions:
      - {type: bounce, smtp_reply_code: "550", status_code: "5.7.1", message: rejected,
         sender: mailer-daemon@example.com}
      - {type: stop}
  - name: support
    recipients: [support@example.com, .example.org]
    actions:
      - {type: add_header, name: X-Team, value: support}
      - {type: s3, bucket: mail, prefix: support/}
  - name: disabled
    enabled: false
    actions: [{type: stop}]
"""


def rule_set(text: str) -> RuleSet:
    return parse_rule_set(text, "rules.yaml").rule_set


@pytest.fixture
def aws(aws: str) -> str:
    """The shared AWS configuration (conftest), with the bucket the rules name."""
    boto3.client("s3").create_bucket(Bucket="mail")
    return aws


def test_export_apply_import_round_trip(aws: str, tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "main.yaml"
    path.write_text(RULES.replace("name: main", "name: roundtrip"))
    assert main(["ses", "apply", str(path), "--test-rate", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "create rule set roundtrip",
        "create rule drop-spam at the beginning",
        "create rule support after drop-spam",
        "create rule disabled after support",
        "activate rule set roundtrip",
        "5 changes applied",
    ]
    described = boto3.client("ses").describe_receipt_rule_set(RuleSetName="roundtrip")
    assert [r["Name"] for r in described["Rules"]] == ["drop-spam", "support", "disabled"]
    assert [r["Enabled"] for r in described["Rules"]] == [True, True, False]

    assert main(["ses", "import", "--rule-set", "roundtrip", "--no-filters"]) == 0
    imported = capsys.readouterr().out
    assert rule_set(imported) == rule_set(path.read_text())

    assert main(["ses", "import", "--active", "--no-filters"]) == 0
    assert rule_set(capsys.readouterr().out) == rule_set(path.read_text())

    assert main(["ses", "plan", str(path), "--test-rate", "1000"]) == 0
    assert capsys.readouterr().out == "no changes\n"


def test_changing_one_rule_updates_only_that_rule(aws: str) -> None:
    client = boto3.client("ses")
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: Any, **_: Any) -> None:
        calls.append((model.name, params))

    client.meta.events.register("before-parameter-build.ses", record)
    ses = live.Throttled(client, rate=1000)
    desired = rule_set(RULES.replace("name: main", "name: onechange"))
    live.apply(ses, live.plan(ses, desired))
    assert live.plan(ses, desired) == []

    changed = rule_set(
        RULES.replace("name: main", "name: onechange").replace("value: support", "value: help")
    )
    calls.clear()
    changes = live.plan(ses, changed)
    live.apply(ses, changes)
    writes = [(name, params) for name, params in calls if not name.startswith("Describe")]
    assert [name for name, _ in writes] == ["UpdateReceiptRule"]
    assert writes[0][1]["Rule"]["Name"] == "support"
    assert [str(c) for c in changes] == ["update rule support (Actions)"]
    assert live.plan(ses, changed) == []


# -- what moto does not implement: botocore's Stubber ----------------------------------------


def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client(
        "ses",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",  # noqa: S106
    )
    return client, Stubber(client)


LIVE = RULES.replace("filters: []", "") + "  - name: gone\n    actions: [{type: stop}]\n"
DESIRED = """\
version: 1
name: main
domains: [example.com, example.org]
filters:
  - {name: office, policy: allow, cidr: 198.51.100.0/24}
  - {name: everyone, policy: block, cidr: 0.0.0.0/0}
rules:
  - name: support
    recipients: [support@example.com, .example.org]
    actions:
      - {type: add_header, name: X-Team, value: support}
      - {type: s3, bucket: mail, prefix: support/}
  - name: drop-spam
    recipients: [example.com]
    scan_enabled: true
    tls_policy: require
    actions:
      - {type: bounce, smtp_reply_code: "550", status_code: "5.7.1", message: rejected,
         sender: mailer-daemon@example.com}
      - {type: stop}
  - name: disabled
    enabled: false
    actions: [{type: stop}]
"""


def test_delete_reorder_and_filters_with_exact_requests() -> None:
    client, stubber = stubbed()
    live_set = rule_set(LIVE)
    rules = [export_rule(r) for r in live_set.rules]
    office = {"Name": "office", "IpFilter": {"Policy": "Allow", "Cidr": "198.51.100.0/24"}}
    old = {"Name": "old", "IpFilter": {"Policy": "Block", "Cidr": "203.0.113.0/24"}}
    everyone = {"Name": "everyone", "IpFilter": {"Policy": "Block", "Cidr": "0.0.0.0/0"}}
    described = {"Metadata": {"Name": "main"}, "Rules": rules}
    stubber.add_response("describe_receipt_rule_set", described, {"RuleSetName": "main"})
    stubber.add_response("describe_active_receipt_rule_set", described, {})
    stubber.add_response("list_receipt_filters", {"Filters": [office, old]}, {})
    stubber.add_response("delete_receipt_rule", {}, {"RuleSetName": "main", "RuleName": "gone"})
    stubber.add_response(
        "reorder_receipt_rule_set",
        {},
        {"RuleSetName": "main", "RuleNames": ["support", "drop-spam", "disabled"]},
    )
    stubber.add_response("delete_receipt_filter", {}, {"FilterName": "old"})
    stubber.add_response("create_receipt_filter", {}, {"Filter": everyone})
    with stubber:
        ses = live.Throttled(client, rate=1000)
        changes = live.plan(ses, rule_set(DESIRED))
        assert [str(c) for c in changes] == [
            "delete rule gone",
            "reorder rules: support, drop-spam, disabled",
            "delete filter old",
            "create filter everyone (Block 0.0.0.0/0)",
        ]
        live.apply(ses, changes)
    stubber.assert_no_pending_responses()


def test_a_changed_filter_is_deleted_and_created_again() -> None:
    desired = rule_set(DESIRED)
    live_filters = [
        {"Name": "office", "IpFilter": {"Policy": "Block", "Cidr": "198.51.100.0/24"}},
        {"Name": "everyone", "IpFilter": {"Policy": "Block", "Cidr": "0.0.0.0/0"}},
    ]
    changes = live.plan_changes(
        desired, desired, rule_set_name="main", active="main", live_filters=live_filters
    )
    assert [(c.operation, c.request) for c in changes] == [
        ("delete_receipt_filter", {"FilterName": "office"}),
        (
            "create_receipt_filter",
            {
                "Filter": {
                    "Name": "office",
                    "IpFilter": {"Policy": "Allow", "Cidr": "198.51.100.0/24"},
                }
            },
        ),
    ]


def test_errors_name_the_operation() -> None:
    client, stubber = stubbed()
    stubber.add_client_error(
        "delete_receipt_rule", "RuleSetDoesNotExist", "Rule set does not exist: main"
    )
    with stubber, pytest.raises(live.SesError, match="delete_receipt_rule: RuleSetDoesNotExist"):
        live.Throttled(client, rate=1000).call(
            "delete_receipt_rule", RuleSetName="main", RuleName="gone"
        )


def test_at_most_one_call_per_second_by_default() -> None:
    client, stubber = stubbed()
    slept: list[float] = []
    for _ in range(3):
        stubber.add_response("list_receipt_filters", {"Filters": []}, {})
    with stubber:
        ses = live.Throttled(client, sleep=slept.append)
        for _ in range(3):
            ses.call("list_receipt_filters")
    assert len(slept) == 2
    assert all(0.9 < s <= 1.0 for s in slept)


def test_rate_above_the_quota_is_refused(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "main.yaml"
    path.write_text(RULES)
    assert main(["ses", "plan", str(path), "--rate", "5"]) == 2
    assert "at most 1 call per second" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["import", "--active"], ["plan", "RULES"], ["apply", "RULES", "--blue-green"]],
    ids=lambda c: c[0],
)
def test_ses_out_of_reach_is_an_error_not_a_traceback(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, command: list[str]
) -> None:
    path = tmp_path / "main.yaml"
    path.write_text(RULES)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    args = ["ses", *[str(path) if a == "RULES" else a for a in command], "--test-rate", "1000"]
    if command[0] == "import":
        args = args[:-2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Could not connect to the endpoint URL" in err
    assert "Traceback" not in err
