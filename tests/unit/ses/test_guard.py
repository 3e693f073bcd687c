"""The guard Lambda on SES-shaped events (fixtures/ses/lambda_action_event.json, the SES
developer guide's sample, with one field changed per case): each condition kind it decides,
both outcomes, how it finds its rule, and its documented answer when it cannot decide."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inbound.ses import guard_handler  # the name export documents
from inbound.ses.guard import GuardError, clear_cache
from tests.conftest import FIXTURES

ROOT = FIXTURES.parent
GUARDED = ROOT / "tests" / "golden" / "ses" / "guarded.yaml"
OVERLAPPING = ROOT / "tests" / "golden" / "ses" / "overlapping.yaml"
BASE = json.loads((FIXTURES / "ses" / "lambda_action_event.json").read_text())
SHARED_ARN = "arn:aws:lambda:us-east-1:123456789012:function:inbound-guard"
CONTINUE = {"disposition": "CONTINUE"}
STOP_RULE = {"disposition": "STOP_RULE"}


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INBOUND_GUARD_FUNCTION_ARN", "INBOUND_GUARD_ON_ERROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INBOUND_RULES", str(GUARDED))
    clear_cache()


def event(
    recipient: str = "recipient@example.com",
    *,
    source: str | None = None,
    headers: dict[str, str] | None = None,
    verdicts: dict[str, str] | None = None,
    dmarc_policy: str | None = None,
    function_arn: str = SHARED_ARN,
) -> dict[str, Any]:
    """The fixture as SES would send it to the guard of the rule matching `recipient`."""
    data: dict[str, Any] = copy.deepcopy(BASE)
    ses = data["Records"][0]["ses"]
    ses["receipt"]["recipients"] = [recipient]
    ses["receipt"]["action"] = {
        "type": "Lambda",
        "functionArn": function_arn,
        "invocationType": "RequestResponse",
    }
    if source is not None:
        ses["mail"]["source"] = source
    for name, value in (headers or {}).items():
        replaced = False
        for header in ses["mail"]["headers"]:
            if header["name"].lower() == name.lower() and not replaced:
                header["value"], replaced = value, True
        if not replaced:
            ses["mail"]["headers"].append({"name": name, "value": value})
    for kind, status in (verdicts or {}).items():
        ses["receipt"][f"{kind}Verdict"] = {"status": status}
    if dmarc_policy is not None:
        ses["receipt"]["dmarcPolicy"] = dmarc_policy
    return data


def test_the_fixture_as_it_is_passes_the_rule_for_its_recipient() -> None:
    # recipient@example.com is quarantine-spam's; the sample's spam verdict is PASS.
    assert guard_handler(BASE, None) == STOP_RULE
    assert guard_handler(event(verdicts={"spam": "FAIL"}), None) == CONTINUE


INVOICE = {"From": "Billing <bills@mail.vendor.example>", "Subject": "Your invoice 42"}
SES_RECEIVED = (
    "from mx.partner.example (mx.partner.example [{ip}]) by inbound-smtp.us-east-1.amazonaws.com "
    "with SMTP id abc for x@sub.example.org; Mon, 05 Aug 2019 21:30:02 +0000 (UTC)"
)
PARTNER = "x@sub.example.org"


@pytest.mark.parametrize(
    ("kind", "changes", "expected"),
    [
        ("spam", {"verdicts": {"spam": "FAIL"}}, CONTINUE),
        ("spam", {"verdicts": {"spam": "GRAY"}}, STOP_RULE),
        ("virus", {"verdicts": {"spam": "FAIL", "virus": "GRAY"}}, CONTINUE),
        ("virus", {"verdicts": {"spam": "FAIL", "virus": "FAIL"}}, STOP_RULE),
        ("subject-and-from", {"recipient": "billing@example.org", "headers": INVOICE}, CONTINUE),
        (
            "subject-regex",
            {"recipient": "billing@example.org", "headers": {**INVOICE, "Subject": "BILL #12"}},
            CONTINUE,
        ),
        (
            "subject-rfc2047",
            {
                "recipient": "billing@example.org",
                "headers": {**INVOICE, "Subject": "=?utf-8?q?Ihre_Invoice_=C3=BC?="},
            },
            CONTINUE,
        ),
        (
            "subject",
            {"recipient": "billing@example.org", "headers": {**INVOICE, "Subject": "Hello"}},
            STOP_RULE,
        ),
        (
            "from",
            {"recipient": "billing@example.org", "headers": {**INVOICE, "From": "a@vendor.test"}},
            STOP_RULE,
        ),
        (
            "unless-dkim",
            {"recipient": "billing@example.org", "headers": INVOICE, "verdicts": {"dkim": "FAIL"}},
            STOP_RULE,
        ),
        # the fixture's SES Received header names 203.0.113.0; its sender is at example.com
        ("client_ip-and-sender", {"recipient": PARTNER}, CONTINUE),
        (
            "client_ip",
            {"recipient": PARTNER, "headers": {"Received": SES_RECEIVED.format(ip="198.51.100.7")}},
            STOP_RULE,
        ),
        (
            "client_ip-v6",
            {"recipient": PARTNER, "headers": {"Received": SES_RECEIVED.format(ip="2001:db8::1")}},
            STOP_RULE,
        ),
        ("sender", {"recipient": PARTNER, "source": "someone@partner.example"}, STOP_RULE),
        (
            "header",
            {"recipient": "alerts@example.net", "headers": {"X-Priority": "1 (Highest)"}},
            CONTINUE,
        ),
        ("header", {"recipient": "alerts@example.net", "headers": {"X-Priority": "3"}}, STOP_RULE),
        ("header-missing", {"recipient": "alerts@example.net"}, STOP_RULE),
        (
            "spf",
            {
                "recipient": "alerts@example.net",
                "headers": {"X-Priority": "1"},
                "verdicts": {"spf": "GRAY"},
            },
            STOP_RULE,
        ),
        (
            "dmarc_policy",
            {
                "recipient": "postmaster@example.net",
                "verdicts": {"dmarc": "FAIL"},
                "dmarc_policy": "reject",
            },
            CONTINUE,
        ),
        (
            "dmarc_policy",
            {
                "recipient": "postmaster@example.net",
                "verdicts": {"dmarc": "FAIL"},
                "dmarc_policy": "none",
            },
            STOP_RULE,
        ),
        ("dmarc", {"recipient": "postmaster@example.net", "dmarc_policy": "reject"}, STOP_RULE),
    ],
)
def test_each_condition_kind(kind: str, changes: dict[str, Any], expected: dict[str, str]) -> None:
    assert guard_handler(event(**changes), None) == expected


def test_only_the_received_header_ses_wrote_gives_the_client_ip() -> None:
    # A forged Received header below SES's (from the sender) names a partner address: ignored.
    data = event(PARTNER, headers={"Received": SES_RECEIVED.format(ip="198.51.100.7")})
    headers = data["Records"][0]["ses"]["mail"]["headers"]
    headers.append({"name": "Received", "value": SES_RECEIVED.format(ip="203.0.113.9")})
    assert guard_handler(data, None) == STOP_RULE
    # Nor when SES's own header is in a form the guard does not know: it cannot decide.
    headers[1]["value"] = "from mx.partner.example by a-new-format.amazonaws.com"
    assert guard_handler(data, None) == STOP_RULE
    headers[1]["value"] = SES_RECEIVED.format(ip="203.0.113.9")
    assert guard_handler(data, None) == CONTINUE


def test_from_and_subject_come_from_common_headers_when_the_list_lacks_them() -> None:
    data = event("billing@example.org", headers=INVOICE)
    mail = data["Records"][0]["ses"]["mail"]
    mail["headersTruncated"] = True
    mail["headers"] = [h for h in mail["headers"] if h["name"] not in ("From", "Subject")]
    mail["commonHeaders"]["from"] = [INVOICE["From"]]
    mail["commonHeaders"]["subject"] = INVOICE["Subject"]
    assert guard_handler(data, None) == CONTINUE


def test_every_lambda_event_sample_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = sorted((FIXTURES / "corpus" / "ses").glob("lambda-event__*.json"))
    assert samples
    path = GUARDED.parent / "guard_every_sample.yaml"
    try:
        path.write_text(
            "version: 1\nname: any\ndomains: [example.com]\nrules:\n"
            "  - {name: all, when: {spf: [PASS, FAIL, GRAY, PROCESSING_FAILED, DISABLED]}}\n"
        )
        monkeypatch.setenv("INBOUND_RULES", str(path))
        for sample in samples:
            assert guard_handler(json.loads(sample.read_text()), None) == CONTINUE, sample.name
    finally:
        path.unlink()


# -- which rule ------------------------------------------------------------------------------

PER_RULE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:inbound-guard:{rule}"


def test_a_guard_per_rule_is_found_by_its_arn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOUND_RULES", str(OVERLAPPING))
    monkeypatch.setenv("INBOUND_GUARD_FUNCTION_ARN", PER_RULE_ARN)
    virus = {"virus": "FAIL", "spam": "PASS"}
    for rule, expected in (("drop-viruses", CONTINUE), ("quarantine_spam", STOP_RULE)):
        arn = PER_RULE_ARN.replace("{rule}", rule)
        assert guard_handler(event(verdicts=virus, function_arn=arn), None) == expected


def test_the_arn_lambda_was_invoked_with_when_the_event_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INBOUND_RULES", str(OVERLAPPING))
    monkeypatch.setenv("INBOUND_GUARD_FUNCTION_ARN", PER_RULE_ARN)
    data = event(verdicts={"spam": "FAIL"}, function_arn="")
    context = SimpleNamespace(
        invoked_function_arn=PER_RULE_ARN.replace("{rule}", "quarantine_spam")
    )
    assert guard_handler(data, context) == CONTINUE


def test_rules_with_the_same_conditions_need_not_be_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "same.yaml"
    path.write_text(
        "version: 1\nname: same\ndomains: [example.com]\nrules:\n"
        "  - {name: a, when: {spf: [FAIL]}, actions: [{type: stop}]}\n"
        "  - {name: b, recipients: [recipient@example.com], when: {spf: [FAIL]}}\n"
    )
    monkeypatch.setenv("INBOUND_RULES", str(path))
    assert guard_handler(event(verdicts={"spf": "FAIL"}), None) == CONTINUE
    assert guard_handler(event(verdicts={"spf": "PASS"}), None) == STOP_RULE


# -- failing safe ----------------------------------------------------------------------------


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "guard.failed"]


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("no-rules-variable", "INBOUND_RULES is not set"),
        ("missing-file", "guard-missing.yaml"),
        ("shared-guard-overlap", "export would refuse"),
        ("local-only-rules", "export would refuse"),
        ("unknown-recipient", "no guarded rule of 'guarded' matches the recipients"),
        ("unknown-arn", "no guarded rule of 'guarded' has the ARN"),
        ("not-an-event", "not an SES or SNS event"),
        ("truncated-headers", "SES truncated the headers"),
        ("no-ses-received", "no client IP in SES's Received header"),
    ],
)
def test_when_it_cannot_decide_it_stops_the_rule_and_says_why(
    setup: str, why: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data: object = event(verdicts={"spam": "FAIL"})  # a CONTINUE, were it decided
    if setup == "no-rules-variable":
        monkeypatch.delenv("INBOUND_RULES")
    elif setup == "missing-file":
        monkeypatch.setenv("INBOUND_RULES", str(GUARDED.parent / "guard-missing.yaml"))
    elif setup == "shared-guard-overlap":
        monkeypatch.setenv("INBOUND_RULES", str(OVERLAPPING))
    elif setup == "local-only-rules":
        monkeypatch.setenv("INBOUND_RULES", str(GUARDED.parent / "local_only.yaml"))
    elif setup == "unknown-recipient":
        data = event("support@example.com")  # a native rule's: SES never asks the guard
    elif setup == "unknown-arn":
        monkeypatch.setenv("INBOUND_GUARD_FUNCTION_ARN", PER_RULE_ARN)
    elif setup == "not-an-event":
        data = {"Records": []}
    elif setup == "truncated-headers":
        data = event("alerts@example.net", headers={"X-Priority": "1"})
        data["Records"][0]["ses"]["mail"]["headersTruncated"] = True
    elif setup == "no-ses-received":
        data = event(PARTNER, headers={"Received": "from somewhere by mx.example; today"})
    with caplog.at_level(logging.INFO, logger="inbound"):
        assert guard_handler(data, None) == STOP_RULE
    [failed] = failures(caplog)
    fields = getattr(failed, "fields", {})
    assert why in fields["error"]
    assert fields["answer"] == "STOP_RULE"


def test_the_answer_on_failure_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INBOUND_RULES")
    monkeypatch.setenv("INBOUND_GUARD_ON_ERROR", "continue")
    assert guard_handler(BASE, None) == CONTINUE
    monkeypatch.setenv("INBOUND_GUARD_ON_ERROR", "RAISE")
    with pytest.raises(GuardError, match="INBOUND_RULES"):
        guard_handler(BASE, None)
    monkeypatch.setenv("INBOUND_GUARD_ON_ERROR", "sometimes")
    assert guard_handler(BASE, None) == STOP_RULE


def test_decisions_are_logged_without_message_content(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inbound"):
        guard_handler(event("billing@example.org", headers=INVOICE), None)
    [decided] = [r for r in caplog.records if getattr(r, "event", None) == "guard.decided"]
    fields = getattr(decided, "fields", {})
    assert fields["rules"] == ["invoices"]
    assert fields["disposition"] == "CONTINUE"
    assert "invoice 42" not in json.dumps(fields)
