"""SES JSON objects: structure against the real samples in fixtures/corpus/ses/, and limits."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbound.actions import ActionModel, LambdaAction, S3Action, SnsAction
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.message.headers import ReceivedFacts, prepend_headers
from inbound.message.notification import (
    HEADERS_BUDGET,
    encode_content,
    lambda_event,
    mail_object,
    receipt_object,
    received_notification,
    ses_timestamp,
    sns_envelope,
    split_addresses,
)

ROOT = Path(__file__).resolve().parents[3]
SES = ROOT / "fixtures" / "corpus" / "ses"
# Only real JSON: the docs__*.txt blocks hold documentation ellipses and line breaks.
SAMPLES = [
    SES / "docs__received_notification_sns_action_with_content.json",
    *sorted(SES.glob("lambda-event__*.json")),
]
CORPUS = sorted((ROOT / "fixtures" / "corpus" / "eml").rglob("*.eml"))
SES_COMMON_KEYS = {
    "returnPath",
    "from",
    "replyTo",
    "date",
    "to",
    "cc",
    "bcc",
    "sender",
    "messageId",
    "subject",
}
# Action keys SES added after some samples were written (documented in the reference §5).
NEWER_ACTION_KEYS = {"objectKeyPrefix", "encoding"}

MESSAGE_ID = "0123456789abcdefghijklmnopqrstuvwxyz0123"
RECEIVED_AT = datetime(2026, 11, 23, 10, 0, 1, 234567, tzinfo=UTC)
TOPIC = "arn:aws:sns:us-east-1:123456789012:inbound"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:IncomingEmail"


def prepended(raw: bytes, rcpts: tuple[str, ...] = ("support@example.com",)) -> bytes:
    facts = ReceivedFacts(
        message_id=MESSAGE_ID,
        hostname="mx.inbound.example",
        mail_from="alice@sender.example",
        rcpt_tos=rcpts,
        helo="mail.sender.example",
        client_ip="203.0.113.5",
        rdns=None,
        tls=True,
        received_at=RECEIVED_AT,
    )
    return prepend_headers(raw, facts)


def mail_for(raw: bytes) -> dict[str, Any]:
    return mail_object(
        message_id=MESSAGE_ID, timestamp=RECEIVED_AT, source="alice@sender.example", raw=raw
    )


def json_type(value: object) -> str:
    return type(value).__name__


# ---- golden structure against the real samples ----


def sample_parts(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(top level, mail, receipt) of a sample notification or Lambda event."""
    data = json.loads(path.read_text())
    if "Records" in data:
        return data, data["Records"][0]["ses"]["mail"], data["Records"][0]["ses"]["receipt"]
    return data, data["mail"], data["receipt"]


def our_action(sample: dict[str, Any]) -> ActionModel:
    """An action of the sample's type, with our own valid values (samples hold placeholders)."""
    topic = {"topic_arn": TOPIC} if "topicArn" in sample else {}
    if sample["type"] == "Lambda":
        invocation = {"Event": "event", "RequestResponse": "request_response"}
        return LambdaAction.model_validate(
            {
                "type": "lambda",
                "function_arn": FUNCTION,
                "invocation_type": invocation[sample["invocationType"]],
                **topic,
            }
        )
    if sample["type"] == "S3":
        return S3Action.model_validate({"type": "s3", "bucket": "incoming-mail", **topic})
    assert sample["type"] == "SNS"
    return SnsAction.model_validate({"type": "sns", "topic_arn": TOPIC})


def verdicts_like(receipt: dict[str, Any]) -> Verdicts:
    def status(key: str) -> Verdict:
        return Verdict(receipt.get(key, {"status": "GRAY"})["status"])

    policy = receipt.get("dmarcPolicy")
    return Verdicts(
        spam=status("spamVerdict"),
        virus=status("virusVerdict"),
        spf=status("spfVerdict"),
        dkim=status("dkimVerdict"),
        dmarc=status("dmarcVerdict"),
        dmarc_policy=DmarcPolicy(policy) if policy else None,
    )


def test_the_samples_are_there() -> None:
    assert len(SAMPLES) == 8
    assert all(path.exists() for path in SAMPLES)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_structure_matches_the_ses_sample(path: Path) -> None:
    top, ses_mail, ses_receipt = sample_parts(path)
    raw = prepended((ROOT / "fixtures" / "messages" / "hello.eml").read_bytes())
    mail = mail_for(raw)
    action = our_action(ses_receipt["action"])
    receipt = receipt_object(
        timestamp=RECEIVED_AT,
        processing_ms=12,
        recipients=["support@example.com"],
        verdicts=verdicts_like(ses_receipt),
        action=action.receipt_action(MESSAGE_ID),
    )

    # mail: same keys, same JSON types.
    assert mail.keys() == ses_mail.keys()
    for key, value in ses_mail.items():
        assert json_type(mail[key]) == json_type(value), key
    for entry in [*mail["headers"], *ses_mail["headers"]]:
        assert entry.keys() == {"name", "value"}
        assert isinstance(entry["name"], str)
        assert isinstance(entry["value"], str)
    assert all(isinstance(a, str) for a in [*mail["destination"], *ses_mail["destination"]])

    # commonHeaders: only keys SES writes; same types where both have the key.
    ours, theirs = mail["commonHeaders"], ses_mail["commonHeaders"]
    assert ours.keys() <= SES_COMMON_KEYS
    assert theirs.keys() <= SES_COMMON_KEYS
    assert ours.keys() & theirs.keys() >= {"returnPath", "from", "to", "date", "subject"}
    for key in ours.keys() & theirs.keys():
        assert json_type(ours[key]) == json_type(theirs[key]), key
        if isinstance(ours[key], list):
            assert all(isinstance(a, str) for a in [*ours[key], *theirs[key]])

    # receipt: same keys (older samples predate dmarcVerdict), same types, same verdicts.
    assert receipt.keys() - ses_receipt.keys() <= {"dmarcVerdict"}
    assert ses_receipt.keys() <= receipt.keys()
    for key, value in ses_receipt.items():
        assert json_type(receipt[key]) == json_type(value), key
        if key.endswith("Verdict") or key == "dmarcPolicy":
            assert receipt[key] == value

    # action: the shape receipt_action() gives, SES's keys and enum values.
    ses_action = ses_receipt["action"]
    assert receipt["action"] == action.receipt_action(MESSAGE_ID)
    assert receipt["action"].keys() - ses_action.keys() <= NEWER_ACTION_KEYS
    assert ses_action.keys() <= receipt["action"].keys()
    for key, value in ses_action.items():
        assert json_type(receipt["action"][key]) == json_type(value), key
    for key in ("type", "invocationType"):
        assert receipt["action"].get(key) == ses_action.get(key)

    # The envelope around them.
    if "Records" in top:
        event = lambda_event(mail, receipt)
        assert event.keys() == top.keys()
        assert len(event["Records"]) == len(top["Records"]) == 1
        record, ses_record = event["Records"][0], top["Records"][0]
        assert record.keys() == ses_record.keys()
        assert record["eventSource"] == ses_record["eventSource"] == "aws:ses"
        assert record["eventVersion"] == ses_record["eventVersion"] == "1.0"
        assert record["ses"].keys() == ses_record["ses"].keys() == {"mail", "receipt"}
    else:
        notification = received_notification(mail, receipt, encode_content(raw, "utf-8"))
        assert notification.keys() == top.keys()
        assert notification["notificationType"] == top["notificationType"] == "Received"
        assert json_type(notification["content"]) == json_type(top["content"])
    json.dumps(mail)
    json.dumps(receipt)


def test_prepended_headers_come_first_in_the_mail_object() -> None:
    mail = mail_for(prepended(b"From: a@b.example\r\n\r\nbody"))
    names = [h["name"] for h in mail["headers"]]
    assert names[:6] == [
        "Return-Path",
        "Received",
        "X-SES-Spam-Verdict",
        "X-SES-Virus-Verdict",
        "Received-SPF",
        "Authentication-Results",
    ]
    received = mail["headers"][1]["value"]
    assert "\r" not in received
    assert "\n" not in received
    assert "\t" not in received  # unfolded: each fold is one space
    assert mail["commonHeaders"]["returnPath"] == "alice@sender.example"


# ---- the 10 KB header budget ----


def test_headers_over_the_budget_are_truncated() -> None:
    lines = [f"X-Long-{i:02d}: {'v' * 500}\r\n" for i in range(40)]
    raw = ("".join(lines) + "\r\nbody\r\n").encode()
    mail = mail_for(raw)
    assert mail["headersTruncated"] is True
    sizes = [len(h["name"]) + len(h["value"]) for h in mail["headers"]]
    assert sum(sizes) <= HEADERS_BUDGET
    # It stopped exactly where the next header would have passed the budget.
    assert sum(sizes) + 9 + 500 > HEADERS_BUDGET
    assert [h["name"] for h in mail["headers"]] == [f"X-Long-{i:02d}" for i in range(len(sizes))]


def test_headers_exactly_at_the_budget_are_not_truncated() -> None:
    name = "X-Fill"
    raw = f"{name}: {'v' * (HEADERS_BUDGET - len(name))}\r\n\r\n".encode()
    mail = mail_for(raw)
    assert mail["headersTruncated"] is False
    assert len(mail["headers"]) == 1
    over = mail_for(raw.replace(b"\r\n\r\n", b"\r\nA: b\r\n\r\n"))
    assert over["headersTruncated"] is True
    assert len(over["headers"]) == 1


def test_budget_counts_utf8_bytes() -> None:
    raw = ("X-Wide: " + "é" * 5200 + "\r\n\r\n").encode()
    mail = mail_for(raw)
    assert mail["headersTruncated"] is True
    assert mail["headers"] == []


# ---- commonHeaders and destination ----


def test_common_headers_all_present() -> None:
    raw = (
        b"Return-Path: <bounce@sender.example>\r\n"
        b'From: "Doe, John" <john@sender.example>\r\n'
        b"Reply-To: help@sender.example\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        b"To: Support <support@example.com>, billing@example.com\r\n"
        b"Cc: (boss) boss@example.com\r\n"
        b"Bcc: hidden@example.com\r\n"
        b"Sender: list@sender.example\r\n"
        b"Message-ID: <m1@sender.example>\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"\r\nbody\r\n"
    )
    common = mail_for(raw)["commonHeaders"]
    assert common == {
        "returnPath": "bounce@sender.example",
        "from": ['"Doe, John" <john@sender.example>'],
        "replyTo": ["help@sender.example"],
        "date": "Mon, 23 Nov 2026 10:00:00 +0000",
        "to": ["Support <support@example.com>", "billing@example.com"],
        "cc": ["(boss) boss@example.com"],
        "bcc": ["hidden@example.com"],
        "sender": ["list@sender.example"],
        "messageId": "<m1@sender.example>",
        "subject": "café",
    }
    assert list(common) == [
        "returnPath",
        "from",
        "replyTo",
        "date",
        "to",
        "cc",
        "bcc",
        "sender",
        "messageId",
        "subject",
    ]


def test_common_headers_only_when_present() -> None:
    common = mail_for(b"From: a@b.example\r\nSubject: hi\r\n\r\nbody")["commonHeaders"]
    assert common == {"from": ["a@b.example"], "subject": "hi"}
    assert mail_for(b"")["commonHeaders"] == {}
    assert mail_for(b"no headers at all\r\n")["commonHeaders"] == {}


def test_return_path_of_the_null_sender_is_empty() -> None:
    common = mail_for(b"Return-Path: <>\r\n\r\n")["commonHeaders"]
    assert common == {"returnPath": ""}


def test_destination_is_to_and_cc_addresses() -> None:
    raw = (
        b'To: "Support, Team" <support@example.com>, billing@example.com\r\n'
        b"Cc: Carol <carol@example.com>\r\n"
        b"Bcc: secret@example.com\r\n"
        b"To: support@example.com\r\n"
        b"\r\n"
    )
    mail = mail_for(raw)
    assert mail["destination"] == [
        "support@example.com",
        "billing@example.com",
        "carol@example.com",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a@x", ["a@x"], id="single"),
        pytest.param(' "Doe, J" <j@x> , b@y ', ['"Doe, J" <j@x>', "b@y"], id="quoted_comma"),
        pytest.param("(a, b) c@x, d@y", ["(a, b) c@x", "d@y"], id="comment_comma"),
        pytest.param("<a,b@x>, c@y", ["<a,b@x>", "c@y"], id="angle_comma"),
        pytest.param(r'"a\", b" <q@x>', [r'"a\", b" <q@x>'], id="escaped_quote"),
        pytest.param("Team: a@x, b@y;, c@z", ["Team: a@x, b@y;", "c@z"], id="group"),
        pytest.param("weird: a@x, b@y", ["weird: a@x", "b@y"], id="unterminated_group"),
        pytest.param(", ,a@x,,", ["a@x"], id="empty_entries"),
        pytest.param("", [], id="empty"),
        pytest.param('"unclosed, a@x', ['"unclosed, a@x'], id="unclosed_quote"),
    ],
)
def test_split_addresses(value: str, expected: list[str]) -> None:
    assert split_addresses(value) == expected


# ---- receipt, content, envelopes ----


def test_receipt_has_dmarc_policy_only_when_set() -> None:
    base: dict[str, Any] = {
        "timestamp": RECEIVED_AT,
        "processing_ms": 7,
        "recipients": ["a@example.com"],
        "action": {"type": "Stop"},
    }
    plain = receipt_object(verdicts=Verdicts(), **base)
    assert "dmarcPolicy" not in plain
    assert plain["spamVerdict"] == {"status": "DISABLED"}
    assert plain["dkimVerdict"] == {"status": "GRAY"}
    assert plain["processingTimeMillis"] == 7
    failed = receipt_object(
        verdicts=Verdicts(dmarc=Verdict.FAIL, dmarc_policy=DmarcPolicy.REJECT), **base
    )
    assert failed["dmarcPolicy"] == "reject"
    assert failed["dmarcVerdict"] == {"status": "FAIL"}


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        pytest.param(RECEIVED_AT, "2026-11-23T10:00:01.234Z", id="utc"),
        pytest.param(datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000Z", id="naive_is_utc"),
        pytest.param(
            datetime(2026, 1, 2, 5, 4, 5, 999999, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02T03:04:05.999Z",
            id="offset",
        ),
    ],
)
def test_timestamps(moment: datetime, expected: str) -> None:
    assert ses_timestamp(moment) == expected


def test_base64_content_round_trips_bytes() -> None:
    raw = bytes(range(256)) * 3 + b"\r\n.\r\n"
    encoded = encode_content(raw, "base64")
    assert encoded.isascii()
    assert base64.b64decode(encoded) == raw


def test_utf8_content_of_non_utf8_bytes() -> None:
    raw = b"Subject: \xff\xfe caf\xe9\r\n\r\n\x80body\r\n"
    text = encode_content(raw, "utf-8")
    assert "\ufffd" in text
    assert text.endswith("body\r\n")
    json.dumps(received_notification(mail_for(raw), {}, text))


def test_notification_without_content_has_no_content_key() -> None:
    assert received_notification({}, {}) == {
        "notificationType": "Received",
        "mail": {},
        "receipt": {},
    }


def test_sns_envelope() -> None:
    notification = received_notification(
        mail_for(prepended("Subject: é\r\n\r\n".encode())), {"a": 1}
    )
    envelope = sns_envelope(
        topic_arn=TOPIC, message=notification, sns_message_id="m-1", timestamp=RECEIVED_AT
    )
    assert envelope == {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": TOPIC,
        "Subject": "Amazon SES Email Receipt Notification",
        "Message": envelope["Message"],
        "Timestamp": "2026-11-23T10:00:01.234Z",
    }
    assert json.loads(envelope["Message"]) == notification


# ---- the corpus ----


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 100


@pytest.mark.parametrize("eml", CORPUS, ids=[p.name for p in CORPUS])
def test_every_corpus_message_gives_a_json_mail_object(eml: Path) -> None:
    raw = prepended(eml.read_bytes(), ("support@example.com", "billing@example.com"))
    mail = mail_for(raw)
    text = json.dumps(mail, ensure_ascii=False)
    assert json.loads(text.encode("utf-8")) == mail  # no lone surrogates either
    assert isinstance(mail["headersTruncated"], bool)
    assert mail["headers"]
    assert mail["headers"][0] == {"name": "Return-Path", "value": "<alice@sender.example>"}
    assert mail["commonHeaders"]["returnPath"] == "alice@sender.example"
    assert sum(len(h["name"].encode()) + len(h["value"].encode()) for h in mail["headers"]) <= (
        HEADERS_BUDGET
    )


@given(st.binary(max_size=600))
def test_mail_object_never_raises(raw: bytes) -> None:
    mail = mail_for(raw)
    assert json.loads(json.dumps(mail, ensure_ascii=False).encode("utf-8")) == mail
