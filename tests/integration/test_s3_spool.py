"""`inbound serve --spool s3://BUCKET/PREFIX --queue URL` and `inbound ses consume` against a
real moto server (SPEC 7b): the receiver keeps no state, the 250 comes only after the object
and its `Received` notification are stored, S3 or SQS unreachable gets 451 4.3.0, a big message
goes up in parts, and the consumer runs each message's actions exactly once (also several at
once, `--concurrency`)."""

from __future__ import annotations

import hashlib
import json
import smtplib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from inbound.cli.main import main
from inbound.message.notification import DIGEST_ATTRIBUTE
from inbound.ses.consume import Consumer
from inbound.ses.rulesets import rules_by_digest
from tests.integration.receiver import Child, start_child, wait_for
from tests.integration.test_aws_receive import Gate
from tests.integration.test_ses_consume import queue, receive, sqs
from tests.integration.test_ses_handler import bucket, get, keys, s3, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MESSAGE = (
    b"From: Alice <alice@sender.example>\r\nTo: bob@example.com\r\n"
    b"Subject: spooled in S3\r\nMessage-ID: <s3spool@sender.example>\r\n\r\nHello.\r\n"
)


def rules_text(out: str, topic: str, extra: str = "") -> str:
    return f"""\
version: 1
name: cluster
domains: [example.com]
rules:
  - name: keep
    recipients: [example.com]
    actions:
      - {{type: s3, bucket: {out}, prefix: kept/}}
      - {{type: sns, topic_arn: "{topic}"}}
{extra}"""


def topic_with_queue() -> tuple[str, str]:
    """An SNS topic and an SQS queue subscribed to it: each publish is one message there."""
    arn: str = boto3.client("sns").create_topic(Name=unique("topic"))["TopicArn"]
    url = queue()
    queue_arn = sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    boto3.client("sns").subscribe(
        TopicArn=arn, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"]
    )
    return arn, url


def drain(url: str) -> list[dict[str, Any]]:
    """Every message in the queue now (received and deleted)."""
    found: list[dict[str, Any]] = []
    while batch := receive(url):
        for message in batch:
            sqs().delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        found += batch
    return found


def count(url: str) -> int:
    attributes = sqs().get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def send(port: int, message: bytes = MESSAGE, rcpt: str = "bob@example.com") -> tuple[int, str]:
    """One message over SMTP: the reply to DATA (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        client.rcpt(rcpt)
        code, text = client.data(message)
    return code, text.decode()


def queued_id(text: str) -> str:
    assert "queued as " in text, text
    return text.rsplit(" ", 1)[1]


def serve(tmp_path: Path, rules: str, spool: str, queue_url: str, **env: str) -> Child:
    (tmp_path / "rules.yaml").write_text(rules)
    return start_child(tmp_path, "--spool", spool, "--queue", queue_url, env=env)


@pytest.fixture
def setup(aws: str) -> dict[str, str]:
    spool, out = bucket(), bucket(versioned=True)
    topic, topic_queue = topic_with_queue()
    return {
        "spool": spool,
        "out": out,
        "topic": topic,
        "topic_queue": topic_queue,
        "queue": queue(VisibilityTimeout="5"),
        "rules": rules_text(out, topic),
    }


def test_a_message_is_stored_queued_and_run_once(setup: dict[str, str], tmp_path: Path) -> None:
    s = setup
    child = serve(tmp_path, s["rules"], f"s3://{s['spool']}/in/", s["queue"])
    try:
        code, text = send(child.port)
    finally:
        child.kill()
    assert code == 250, text
    message_id = queued_id(text)
    stored = get(s["spool"], f"in/{message_id}")
    # The prepended headers (SPEC section 5) on top, the message below them unchanged.
    assert stored.startswith(b"Return-Path: <alice@sender.example>\r\nReceived: from client.test")
    assert stored.endswith(MESSAGE)
    digest = hashlib.sha256(s["rules"].encode()).hexdigest()
    assert get(s["spool"], f"in/rules/{digest}.yaml").decode() == s["rules"]
    # Nothing of the message in the data directory: no local spool at all.
    assert not (child.data_dir / "spool").exists()
    assert list((child.data_dir / "s3-tmp").iterdir()) == []

    (notice,) = sqs().receive_message(
        QueueUrl=s["queue"], MessageAttributeNames=["All"], VisibilityTimeout=0
    )["Messages"]
    assert notice["MessageAttributes"][DIGEST_ATTRIBUTE]["StringValue"] == digest
    body = json.loads(notice["Body"])
    assert body["notificationType"] == "Received"
    assert body["mail"]["messageId"] == message_id
    assert body["mail"]["commonHeaders"]["subject"] == "spooled in S3"
    assert body["receipt"]["recipients"] == ["bob@example.com"]
    assert body["receipt"]["action"] == {
        "type": "S3",
        "bucketName": s["spool"],
        "objectKeyPrefix": "in/",
        "objectKey": f"in/{message_id}",
    }
    assert set(body["receipt"]) >= {"spamVerdict", "virusVerdict", "spfVerdict", "dkimVerdict"}

    # The consumer reads the rule set by its digest (no --rules, no INBOUND_RULES).
    stats = Consumer(s["queue"], wait=1, max_messages=1).run()
    assert (stats.succeeded, stats.failed) == (1, 0)
    assert count(s["queue"]) == 0
    versions = s3().list_object_versions(Bucket=s["out"])["Versions"]
    assert [v["Key"] for v in versions] == [f"kept/{message_id}"]
    assert get(s["out"], f"kept/{message_id}") == stored
    (published,) = drain(s["topic_queue"])
    assert message_id in published["Body"]

    # SQS delivers a notification twice: the S3 ledger runs nothing twice.
    sqs().send_message(
        QueueUrl=s["queue"],
        MessageBody=notice["Body"],
        MessageAttributes={DIGEST_ATTRIBUTE: {"DataType": "String", "StringValue": digest}},
    )
    assert Consumer(s["queue"], wait=1, max_messages=1).run().succeeded == 1
    assert len(s3().list_object_versions(Bucket=s["out"])["Versions"]) == 1
    assert drain(s["topic_queue"]) == []


@pytest.mark.parametrize("service", ["both", "SQS"])
def test_s3_or_sqs_unreachable_is_451_and_mail_flows_when_it_is_back(
    setup: dict[str, str], tmp_path: Path, service: str, moto: str
) -> None:
    s = setup
    gate = Gate(int(moto.rpartition(":")[2]))
    endpoint = f"http://127.0.0.1:{gate.port}"
    # Everything through the gate, or S3 straight to moto and SQS through the gate.
    env = (
        {"AWS_ENDPOINT_URL": endpoint} if service == "both" else {"AWS_ENDPOINT_URL_SQS": endpoint}
    )
    child = serve(tmp_path, s["rules"], f"s3://{s['spool']}/in/", s["queue"], **env)
    try:
        code, text = send(child.port)
        assert (code, text.split()[0]) == (451, "4.3.0"), text
        assert count(s["queue"]) == 0  # nothing queued that was not acknowledged
        gate.open()
        code, text = send(child.port)
        assert code == 250, text
        message_id = queued_id(text)
    finally:
        gate.close()
        child.kill()
    assert f"in/{message_id}" in keys(s["spool"])
    (notice,) = drain(s["queue"])
    assert json.loads(notice["Body"])["mail"]["messageId"] == message_id


def test_a_slow_s3_gets_451_within_the_data_timeout(setup: dict[str, str], tmp_path: Path) -> None:
    """A endpoint that accepts connections and never answers: the session is not held."""
    import socket  # noqa: PLC0415

    s = setup
    with socket.create_server(("127.0.0.1", 0)) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        (tmp_path / "rules.yaml").write_text(s["rules"])
        child = start_child(
            tmp_path,
            "--spool",
            f"s3://{s['spool']}/in/",
            "--queue",
            s["queue"],
            "--data-timeout",
            "3",
            env={"AWS_ENDPOINT_URL": endpoint},
        )
        try:
            started = time.monotonic()
            code, text = send(child.port)
            took = time.monotonic() - started
        finally:
            child.kill()
    assert (code, text.split()[0]) == (451, "4.3.0"), text
    assert took < 10, took
    assert count(s["queue"]) == 0


def test_a_big_message_goes_up_in_parts_with_bounded_memory(
    setup: dict[str, str], tmp_path: Path
) -> None:
    s = setup
    line = b"x" * 998 + b"\r\n"
    big = MESSAGE + line * (20 * 1024 * 1024 // len(line))
    child = serve(tmp_path, s["rules"], f"s3://{s['spool']}/in/", s["queue"])
    try:
        before = _peak_rss(child)
        code, text = send(child.port, big)
        after = _peak_rss(child)
    finally:
        child.kill()
    assert code == 250, text
    key = f"in/{queued_id(text)}"
    head = s3().head_object(Bucket=s["spool"], Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # 20 MB in 8 MB parts
    assert head["ContentLength"] > len(big)
    assert get(s["spool"], key).endswith(big)
    # One 8 MB part in memory at a time, never the 20 MB message: the peak grows by less
    # than the message's size (a local spool's receiver: a few MB).
    assert after - before < len(big), (before, after)


def _peak_rss(child: Child) -> int:
    status = Path(f"/proc/{child.process.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


class _SlowHook(BaseHTTPRequestHandler):
    """A webhook endpoint that takes a second to answer and counts requests in flight."""

    lock = threading.Lock()
    in_flight = 0
    most = 0
    served: list[str] = []  # noqa: RUF012 - one endpoint per test, reset by it

    def do_POST(self) -> None:
        cls = type(self)
        self.rfile.read(int(self.headers["Content-Length"]))
        with cls.lock:
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        time.sleep(1.0)
        with cls.lock:
            cls.in_flight -= 1
            cls.served.append(self.headers.get("webhook-id", ""))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_consume_concurrency_runs_messages_at_once(
    setup: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _SlowHook.in_flight = _SlowHook.most = 0
    _SlowHook.served = []
    monkeypatch.setenv("HOOK_SECRET", "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    rules = f"""\
version: 1
name: hooks
domains: [example.com]
rules:
  - name: hook
    recipients: [example.com]
    actions:
      - {{type: webhook, url: "{url}", secret_env: HOOK_SECRET}}
"""
    child = serve(tmp_path, rules, f"s3://{s['spool']}/in/", s["queue"])
    try:
        ids = [queued_id(send(child.port)[1]) for _ in range(4)]
    finally:
        child.kill()
    wait_for(lambda: count(s["queue"]) == 4, "four notifications")
    started = time.monotonic()
    stats = Consumer(s["queue"], wait=1, max_messages=4, concurrency=4).run()
    took = time.monotonic() - started
    server.shutdown()
    server.server_close()
    assert (stats.succeeded, stats.failed) == (4, 0), ids
    assert _SlowHook.most >= 3, _SlowHook.most  # one at a time would be 1
    assert took < 3.5, took  # four one-second webhooks, one after another: 4 s at least
    assert count(s["queue"]) == 0


def test_workers_store_through_s3_too(setup: dict[str, str], tmp_path: Path) -> None:
    s = setup
    (tmp_path / "rules.yaml").write_text(s["rules"])
    child = start_child(
        tmp_path, "--spool", f"s3://{s['spool']}/in/", "--queue", s["queue"], "--workers", "2"
    )
    try:
        ids = {queued_id(send(child.port)[1]) for _ in range(4)}
    finally:
        child.kill()
    assert {f"in/{i}" for i in ids} <= set(keys(s["spool"], "in/"))
    noticed = {json.loads(m["Body"])["mail"]["messageId"] for m in drain(s["queue"])}
    assert noticed == ids


def test_the_rule_set_is_stored_once_per_digest(setup: dict[str, str], tmp_path: Path) -> None:
    """Eight sessions at once on a fresh receiver's first messages, then a second receiver:
    one version of rules/DIGEST.yaml in a versioned bucket (SPEC 7b: stored once)."""
    s = setup
    spool = bucket(versioned=True)
    ids: list[str] = []

    def one(port: int) -> None:
        ids.append(queued_id(send(port)[1]))

    for name in ("first", "second"):
        home = tmp_path / name
        home.mkdir()
        child = serve(home, s["rules"], f"s3://{spool}/in/", s["queue"])
        try:
            senders = [threading.Thread(target=one, args=(child.port,)) for _ in range(8)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(60)
        finally:
            child.kill()
    assert len(ids) == 16
    versions = s3().list_object_versions(Bucket=spool, Prefix="in/rules/")["Versions"]
    digest = hashlib.sha256(s["rules"].encode()).hexdigest()
    assert [v["Key"] for v in versions] == [f"in/rules/{digest}.yaml"]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--spool", "s3://spool/in/"], "needs --queue"),
        (["--queue", "http://127.0.0.1:1/q"], "--queue goes with --spool"),
        (["--spool", "/var/spool", "--queue", "http://127.0.0.1:1/q"], "expected s3://"),
    ],
)
def test_spool_flags_are_checked(
    flags: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.yaml").write_text(rules_text("out", "arn:aws:sns:us-east-1:123456789012:t"))
    args = ["serve", "--rules", str(tmp_path / "rules.yaml"), "--data-dir", str(tmp_path / "d")]
    assert main([*args, *flags]) == 2
    assert said in capsys.readouterr().err


def test_no_region_is_said_at_start(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    (tmp_path / "rules.yaml").write_text(rules_text("out", "arn:aws:sns:us-east-1:123456789012:t"))
    args = ["serve", "--rules", str(tmp_path / "rules.yaml"), "--data-dir", str(tmp_path / "d")]
    assert main([*args, "--spool", "s3://spool/in/", "--queue", "http://127.0.0.1:1/q"]) == 2
    assert "region" in capsys.readouterr().err


def test_rules_a_consumer_cannot_evaluate_are_refused_at_start(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    office = "  - name: office\n    when: {client_ip: [198.51.100.0/24]}\n    actions:\n"
    office += "      - {type: stop}\n"
    (tmp_path / "rules.yaml").write_text(
        rules_text("out", "arn:aws:sns:us-east-1:123456789012:t", office)
    )
    args = ["serve", "--rules", str(tmp_path / "rules.yaml"), "--data-dir", str(tmp_path / "d")]
    assert main([*args, "--spool", "s3://spool/in/", "--queue", "http://127.0.0.1:1/q"]) == 2
    err = capsys.readouterr().err
    assert "rules.yaml:" in err
    assert "client_ip" in err
    assert "receipt filters" in err


class CountingS3:
    """A real S3 client that counts the reads (and makes each take a moment, as a real one
    does, so threads that all need a rule set do overlap)."""

    def __init__(self) -> None:
        self.s3 = s3()
        self.reads = 0

    def get_object(self, **request: Any) -> Any:
        self.reads += 1
        time.sleep(0.05)
        return self.s3.get_object(**request)


def test_consumer_threads_needing_a_new_rule_set_read_it_once(setup: dict[str, str]) -> None:
    s = setup
    digest = hashlib.sha256(s["rules"].encode()).hexdigest()
    s3().put_object(Bucket=s["spool"], Key=f"in/rules/{digest}.yaml", Body=s["rules"].encode())
    counting, start = CountingS3(), threading.Barrier(8)
    found: list[object] = []

    def consumer_thread() -> None:
        start.wait()
        found.append(rules_by_digest(counting, s["spool"], "in/", digest))

    threads = [threading.Thread(target=consumer_thread) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(found) == 8
    assert len({id(rules) for rules in found}) == 1
    assert counting.reads == 1
