"""The SES Lambda handler against a real moto server: events of the corpus, SNS-wrapped
notifications, the rules' actions through the AWS targets, verdicts from the receipt, and
idempotency per messageId."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from inbound.ses import (
    lambda_handler,  # the name SPEC section 8 gives
)
from inbound.ses.handler import SesEventError, SesRuleSetError
from tests.conftest import FIXTURES
from tests.mime_samples import many_parts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CORPUS = FIXTURES / "corpus" / "ses"
SAMPLES = sorted(CORPUS.glob("lambda-event__*.json"))
# Cleaned copies of the documentation's samples that are not valid JSON as published.
LAMBDA_EVENT = FIXTURES / "ses" / "lambda_action_event.json"
SNS_BASE64 = FIXTURES / "ses" / "received_notification_sns_action_base64.json"
# SES's sending-side notifications (Bounce, Complaint, Delivery): not receipts.
SENDING = sorted(
    p
    for p in [*CORPUS.glob("docs__*_notification*.json"), *CORPUS.glob("notification__*.json")]
    if not p.name.startswith("docs__received")
)
RAW = (CORPUS / "lambda-event__ses-forwarder__message.eml").read_bytes()
SNS_WITH_CONTENT = CORPUS / "docs__received_notification_sns_action_with_content.json"
S3_NOTIFICATION = FIXTURES / "ses" / "received_notification_s3_action.json"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def s3() -> Any:
    return boto3.client("s3")


def bucket(name: str | None = None, *, versioned: bool = False) -> str:
    name = name or unique("bucket")
    s3().create_bucket(Bucket=name)
    if versioned:
        s3().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def get(bucket_name: str, key: str) -> bytes:
    data: bytes = s3().get_object(Bucket=bucket_name, Key=key)["Body"].read()
    return data


def keys(bucket_name: str, prefix: str = "") -> list[str]:
    listed = s3().list_objects_v2(Bucket=bucket_name, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / unique("rules")
    path.with_suffix(".yaml").write_text(text)
    monkeypatch.setenv("INBOUND_RULES", str(path.with_suffix(".yaml")))


def store_rules(domains: list[str], out: str) -> str:
    return f"""\
version: 1
name: ses
domains: {json.dumps(domains)}
rules:
  - name: keep
    actions:
      - {{type: s3, bucket: {out}, prefix: out/}}
"""


def sns_event(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:inbound:sub",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": str(uuid.uuid4()),
                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:inbound",
                    "Subject": "Amazon SES Email Receipt Notification",
                    "Message": json.dumps(message),
                    "Timestamp": "2026-01-01T00:00:00.000Z",
                },
            }
        ]
    }


def ses_event(
    message_id: str, recipient: str = "user@example.com", spam: str = "PASS"
) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(SAMPLES[0].read_text())
    record = event["Records"][0]["ses"]
    record["mail"]["messageId"] = message_id
    record["receipt"]["recipients"] = [recipient]
    record["receipt"]["spamVerdict"] = {"status": spam}
    return event


def stored_message(message_id: str) -> str:
    """Put RAW where INBOUND_SES_BUCKET + INBOUND_SES_PREFIX say SES stored it."""
    return stored_at(bucket(), "incoming/", message_id)


def stored_at(source: str, prefix: str, message_id: str) -> str:
    s3().put_object(Bucket=source, Key=prefix + message_id, Body=RAW)
    return source


@pytest.mark.parametrize("sample", [*SAMPLES, LAMBDA_EVENT], ids=lambda p: p.stem)
def test_every_lambda_event_sample_is_accepted(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: Path
) -> None:
    event = json.loads(sample.read_text())
    ses = event["Records"][0]["ses"]
    message_id = ses["mail"]["messageId"]
    action = ses["receipt"]["action"]
    if action.get("type") == "S3":  # read from the S3 action's own object
        source = action["bucketName"]
        bucket(source)
        s3().put_object(Bucket=source, Key=action["objectKey"], Body=RAW)
    else:
        source = stored_message(message_id)
        monkeypatch.setenv("INBOUND_SES_BUCKET", source)
        monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket()
    domains = sorted({r.rpartition("@")[2] for r in ses["receipt"]["recipients"]})
    rules(tmp_path, monkeypatch, store_rules(domains, out))

    assert lambda_handler(event, None) == {"disposition": "CONTINUE"}
    assert get(out, f"out/{message_id}") == RAW
    state = json.loads(get(source, f"{os.environ['INBOUND_SES_STATE_PREFIX']}{message_id}.json"))
    assert state == {"messageId": message_id, "steps": {"0:0": None}}


def test_sns_wrapped_notification_with_content(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notification = json.loads(SNS_WITH_CONTENT.read_text())
    out = bucket()
    rules(tmp_path, monkeypatch, store_rules(["example.com"], out))
    message_id = notification["mail"]["messageId"]
    expected = notification["content"].encode("utf-8")

    assert lambda_handler(sns_event(notification), None) == {"disposition": "CONTINUE"}
    assert get(out, f"out/{message_id}") == expected

    encoded = copy.deepcopy(notification)
    encoded["mail"]["messageId"] = message_id + "b64"
    encoded["receipt"]["action"]["encoding"] = "BASE64"
    encoded["content"] = base64.b64encode(expected).decode("ascii")
    assert lambda_handler(sns_event(encoded), None) == {"disposition": "CONTINUE"}
    assert get(out, f"out/{message_id}b64") == expected


def test_sns_wrapped_notification_of_an_s3_action_reads_the_object(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notification = json.loads(S3_NOTIFICATION.read_text())
    action = notification["receipt"]["action"]
    source = unique("ses-store")
    action["bucketName"] = source
    bucket(source)
    s3().put_object(Bucket=source, Key=action["objectKey"], Body=RAW)
    out = bucket()
    rules(tmp_path, monkeypatch, store_rules(["example.com"], out))

    assert lambda_handler(sns_event(notification), None) == {"disposition": "CONTINUE"}
    assert get(out, f"out/{notification['mail']['messageId']}") == RAW


def test_setup_notification_is_ignored(aws: str) -> None:
    # No INBOUND_RULES and no bucket: the handler must not even look for them.
    setup = {"notificationType": "AMAZON_SES_SETUP_NOTIFICATION"}
    assert lambda_handler(sns_event(setup), None) == {"disposition": "CONTINUE"}
    received = json.loads(S3_NOTIFICATION.read_text())
    received["mail"]["messageId"] = "AMAZON_SES_SETUP_NOTIFICATION"
    assert lambda_handler(sns_event(received), None) == {"disposition": "CONTINUE"}


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"Records": []},
        {"Records": [{"eventSource": "aws:s3", "s3": {}}]},
        {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "not json"}}]},
        {
            "Records": [
                {"EventSource": "aws:sns", "Sns": {"Message": '{"notificationType": "Bounce"}'}}
            ]
        },
        {"Records": [{"eventSource": "aws:ses", "ses": {"mail": {}, "receipt": {}}}]},
    ],
)
def test_other_events_are_refused(event: dict[str, Any]) -> None:
    with pytest.raises(SesEventError):
        lambda_handler(event, None)


def test_s3_action_and_stop(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message_id = unique("stop")
    monkeypatch.setenv("INBOUND_SES_BUCKET", stored_message(message_id))
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket()
    rules(
        tmp_path,
        monkeypatch,
        f"""\
version: 1
name: ses
domains: [example.com]
rules:
  - name: store-and-stop
    actions:
      - {{type: add_header, name: X-Team, value: support}}
      - {{type: s3, bucket: {out}, prefix: kept}}
      - {{type: stop}}
  - name: never
    actions:
      - {{type: s3, bucket: {out}, prefix: never/}}
""",
    )
    assert lambda_handler(ses_event(message_id), None) == {"disposition": "STOP_RULE_SET"}
    assert keys(out) == [f"kept/{message_id}"]
    assert get(out, f"kept/{message_id}") == b"X-Team: support\r\n" + RAW


def test_a_duplicate_event_runs_nothing_twice(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = unique("dup")
    source = stored_message(message_id)
    monkeypatch.setenv("INBOUND_SES_BUCKET", source)
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket(versioned=True)
    rules(
        tmp_path,
        monkeypatch,
        f"""\
version: 1
name: ses
domains: [example.com]
rules:
  - name: twice
    actions:
      - {{type: s3, bucket: {out}, prefix: a/}}
      - {{type: s3, bucket: {out}, prefix: b/}}
""",
    )
    event = ses_event(message_id)
    assert lambda_handler(event, None) == {"disposition": "CONTINUE"}
    assert lambda_handler(copy.deepcopy(event), None) == {"disposition": "CONTINUE"}
    versions = s3().list_object_versions(Bucket=out)["Versions"]
    assert sorted(v["Key"] for v in versions) == [f"a/{message_id}", f"b/{message_id}"]
    state_key = f"{os.environ['INBOUND_SES_STATE_PREFIX']}{message_id}.json"
    assert json.loads(get(source, state_key))["steps"] == {"0:0": None, "0:1": None}

    # A run that failed after its first action resumes with the second only.
    second = unique("resume")
    stored_at(source, "incoming/", second)
    s3().put_object(
        Bucket=source,
        Key=f"{os.environ['INBOUND_SES_STATE_PREFIX']}{second}.json",
        Body=json.dumps({"messageId": second, "steps": {"0:0": None}}).encode(),
    )
    assert lambda_handler(ses_event(second), None) == {"disposition": "CONTINUE"}
    assert f"a/{second}" not in keys(out)
    assert f"b/{second}" in keys(out)


@pytest.mark.parametrize(("spam", "where"), [("FAIL", "quarantine"), ("PASS", "inbox")])
def test_receipt_verdicts_drive_conditions(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spam: str, where: str
) -> None:
    message_id = unique(f"spam-{spam.lower()}")
    monkeypatch.setenv("INBOUND_SES_BUCKET", stored_message(message_id))
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket()
    rules(
        tmp_path,
        monkeypatch,
        f"""\
version: 1
name: ses
domains: [example.com]
rules:
  - name: quarantine
    scan_enabled: true
    when: {{spam: [FAIL]}}
    actions:
      - {{type: s3, bucket: {out}, prefix: quarantine/}}
      - {{type: stop}}
  - name: inbox
    scan_enabled: true
    actions:
      - {{type: s3, bucket: {out}, prefix: inbox/}}
""",
    )
    disposition = "STOP_RULE_SET" if spam == "FAIL" else "CONTINUE"
    assert lambda_handler(ses_event(message_id, spam=spam), None) == {"disposition": disposition}
    assert keys(out) == [f"{where}/{message_id}"]


def test_connection_conditions_cannot_be_evaluated(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = unique("ip")
    monkeypatch.setenv("INBOUND_SES_BUCKET", stored_message(message_id))
    rules(
        tmp_path,
        monkeypatch,
        """\
version: 1
name: ses
domains: [example.com]
rules:
  - name: office
    when: {client_ip: [198.51.100.0/24]}
    actions:
      - {type: stop}
""",
    )
    with pytest.raises(SesRuleSetError, match="office"):
        lambda_handler(ses_event(message_id), None)


def test_a_prefix_without_a_slash_is_read_where_ses_wrote_it(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SES puts a non-empty prefix that does not end in "/" in front of the messageId with a
    # "/" (reference section 2.1): INBOUND_SES_PREFIX=incoming reads incoming/ID.
    message_id = unique("prefix")
    source = stored_at(bucket(), "incoming/", message_id)
    monkeypatch.setenv("INBOUND_SES_BUCKET", source)
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming")
    out = bucket()
    rules(tmp_path, monkeypatch, store_rules(["example.com"], out))
    assert lambda_handler(ses_event(message_id), None) == {"disposition": "CONTINUE"}
    assert get(out, f"out/{message_id}") == RAW


def test_sns_notification_with_base64_content(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notification = json.loads(SNS_BASE64.read_text())
    out = bucket()
    rules(tmp_path, monkeypatch, store_rules(["example.com"], out))
    message_id = notification["mail"]["messageId"]
    assert lambda_handler(sns_event(notification), None) == {"disposition": "CONTINUE"}
    stored = get(out, f"out/{message_id}")
    assert stored == base64.b64decode(notification["content"])
    assert b"Subject: Amazon SES Test" in stored


@pytest.mark.parametrize(
    "sample",
    SENDING,
    ids=lambda p: p.stem,
)
def test_sending_notifications_are_refused_by_name(sample: Path) -> None:
    data = json.loads(sample.read_text())
    message = json.loads(data["Message"]) if "Message" in data else data
    with pytest.raises(SesEventError, match=f"notificationType '{message['notificationType']}'"):
        lambda_handler(sns_event(message), None)


@pytest.mark.parametrize(
    ("raw", "disposition", "refused"),
    [
        pytest.param(many_parts(1000), "CONTINUE", False, id="part-1000-seen"),
        pytest.param(many_parts(1001), "STOP_RULE_SET", True, id="part-1001-refused"),
    ],
)
def test_beyond_the_mime_limits_no_action_runs(
    aws: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    disposition: str,
    refused: bool,
) -> None:
    """SES took the message already: the receiver's 554 5.6.0 becomes "no action, stop"."""
    message_id = unique("mime")
    source = bucket()
    s3().put_object(Bucket=source, Key=f"incoming/{message_id}", Body=raw)
    monkeypatch.setenv("INBOUND_SES_BUCKET", source)
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket()
    rules(
        tmp_path,
        monkeypatch,
        f"""\
version: 1
name: ses
domains: [example.com]
rules:
  - name: no-executables
    unless: {{attachment: {{filename: "*.exe"}}}}
    actions:
      - {{type: s3, bucket: {out}, prefix: kept/}}
""",
    )
    caplog.set_level(logging.INFO, logger="inbound")
    assert lambda_handler(ses_event(message_id), None) == {"disposition": disposition}
    assert keys(out) == []  # x.exe seen, or the message refused: never "no .exe here"
    events = [getattr(r, "event", None) for r in caplog.records]
    assert ("ses.message_refused" in events) is refused


def test_a_forward_via_ses_runs_in_the_handler(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail SES received, forwarded by the handler with SendEmail (moto refuses any From that
    is not a verified identity: the rewritten one is); each destination is a step of its own."""
    message_id = unique("forwarded")
    source = stored_message(message_id)
    monkeypatch.setenv("INBOUND_SES_BUCKET", source)
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    verified = f"{unique('fwd')}.test"
    boto3.client("sesv2").create_email_identity(EmailIdentity=verified)
    forward = (
        "{type: forward, to: [a@dest.test, b@dest.test], via: ses, "
        f"from_address: forwarder@{verified}}}"
    )
    text = (
        "version: 1\nname: ses\ndomains: [example.com]\nrules:\n"
        f"  - name: forward\n    actions:\n      - {forward}\n"
    )
    rules(tmp_path, monkeypatch, text)
    assert lambda_handler(ses_event(message_id, "info@example.com"), None) == {
        "disposition": "CONTINUE"
    }
    state = json.loads(get(source, f"{os.environ['INBOUND_SES_STATE_PREFIX']}{message_id}.json"))
    assert sorted(state["steps"]) == ["0:0", "0:0:a@dest.test", "0:0:b@dest.test"]
