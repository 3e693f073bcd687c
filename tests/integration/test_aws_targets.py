"""The AWS target set against a real moto server over HTTP, driven through the actions' own
execute() and the receiver's SES builders, configured only by the standard AWS env vars."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
import zipfile
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from inbound.actions.awslambda import LambdaAction
from inbound.actions.base import ActionContext
from inbound.actions.s3 import S3Action
from inbound.actions.sns import SnsAction
from inbound.core.errors import PermanentActionError, TransientActionError
from inbound.core.ids import MessageIdGenerator
from inbound.core.services import BounceRequest, Services
from inbound.core.steps import CONTINUE
from inbound.core.verdicts import Verdict, Verdicts
from inbound.message.notification import SNS_SUBJECT
from inbound.run.context import RunSubject, action_context
from inbound.targets.aws import AwsTargets
from inbound.targets.aws_errors import classify
from tests.conftest import FIXTURES
from tests.integration.daemons import moto_request, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SNS_FIXTURE = (
    FIXTURES / "corpus" / "ses" / "docs__received_notification_sns_action_with_content.json"
)
RECEIVED = datetime(2015, 9, 11, 20, 32, 33, 936000, tzinfo=UTC)
PASSING = Verdicts(
    spam=Verdict.PASS, virus=Verdict.PASS, spf=Verdict.PASS, dkim=Verdict.PASS, dmarc=Verdict.PASS
)
TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ses.amazonaws.com"}, "Action": "*"}
        ],
    }
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def context(raw: bytes, message_id: str) -> ActionContext:
    """What the runner gives an action, from the package's own builder."""
    subject = RunSubject(
        message_id=message_id,
        mail_from="sender@example.com",
        base=raw,
        received_at=RECEIVED,
        processing_ms=lambda: 222,
    )
    return action_context(subject, raw, ("recipient@example.com",), PASSING)


def fixture_notification() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SNS_FIXTURE.read_text())
    return loaded


def fixture_message() -> bytes:
    return str(fixture_notification()["content"]).encode()


def make_bucket() -> str:
    bucket = unique("mail")
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


def make_role() -> str:
    role = boto3.client("iam").create_role(
        RoleName=unique("ses-role"), AssumeRolePolicyDocument=TRUST_POLICY
    )
    return str(role["Role"]["Arn"])


def make_function() -> str:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    created = boto3.client("lambda").create_function(
        FunctionName=unique("incoming"),
        Runtime="python3.11",
        Role=make_role(),
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
    )
    return str(created["FunctionArn"])


def lambda_event_record(event: dict[str, object]) -> object:
    records = event["Records"]
    assert isinstance(records, list)
    assert len(records) == 1
    return records[0]


def queue_lambda_results(endpoint: str, *results: str) -> None:
    """The lambda-simple backend answers the next invokes with these (reference section 3)."""
    moto_request(
        endpoint,
        "/moto-api/static/lambda-simple/response",
        {"results": list(results), "region": "us-east-1"},
    )


# -- S3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", "{id}"), ("in", "in/{id}"), ("in/", "in/{id}")],
    ids=["no_prefix", "prefix_without_slash", "prefix_with_slash"],
)
def test_s3_stores_the_message_at_prefix_plus_message_id(aws, prefix, expected):
    bucket = make_bucket()
    message_id = MessageIdGenerator().next()
    raw = fixture_message()
    action = S3Action(type="s3", bucket=bucket, prefix=prefix)

    assert run(action.execute(context(raw, message_id), Services.of(AwsTargets()))) == CONTINUE

    key = expected.format(id=message_id)
    stored = boto3.client("s3").get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == raw
    assert stored["ContentType"] == "message/rfc822"
    assert action.receipt_action(message_id)["objectKey"] == key


def test_s3_encrypts_with_the_kms_key(aws):
    bucket = make_bucket()
    key_arn = boto3.client("kms").create_key(Description="inbound test")["KeyMetadata"]["Arn"]
    message_id = MessageIdGenerator().next()
    action = S3Action(type="s3", bucket=bucket, prefix="enc", kms_key_arn=key_arn)

    run(action.execute(context(fixture_message(), message_id), Services.of(AwsTargets())))

    head = boto3.client("s3").head_object(Bucket=bucket, Key=f"enc/{message_id}")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn


def test_s3_signs_with_the_assumed_role_and_caches_its_credentials(aws):
    bucket = make_bucket()
    role_arn = make_role()
    session = boto3.session.Session()
    issued: list[str] = []
    signed_with: list[str] = []

    def on_assume_role(parsed: dict[str, Any], **_: Any) -> None:
        issued.append(parsed["Credentials"]["AccessKeyId"])

    def on_put(request: Any, **_: Any) -> None:
        authorization = request.headers["Authorization"]
        authorization = (
            authorization.decode() if isinstance(authorization, bytes) else authorization
        )
        signed_with.append(authorization.split("Credential=")[1].split("/")[0])

    # Clients copy the session's event hooks when they are made, so these see AwsTargets' calls.
    session.events.register("after-call.sts.AssumeRole", on_assume_role)
    session.events.register("before-send.s3.PutObject", on_put)
    targets = AwsTargets(session=session)
    action = S3Action(type="s3", bucket=bucket, iam_role_arn=role_arn)

    for _ in range(2):
        message_id = MessageIdGenerator().next()
        run(action.execute(context(fixture_message(), message_id), Services.of(targets)))
        assert boto3.client("s3").head_object(Bucket=bucket, Key=message_id)

    assert len(issued) == 1, "the role's credentials are fetched once and cached"
    assert issued[0] != "testing"
    assert signed_with == [issued[0], issued[0]]


def test_s3_large_message_goes_multipart(aws):
    bucket = make_bucket()
    threshold = 5 * 1024 * 1024  # S3's smallest part
    raw = fixture_message() + b"x" * (2 * threshold + 123)
    targets = AwsTargets(multipart_threshold=threshold)

    run(targets.store(bucket, "big", raw, kms_key_arn=None, iam_role_arn=None))

    stored = boto3.client("s3").get_object(Bucket=bucket, Key="big")
    assert stored["Body"].read() == raw
    assert stored["ContentType"] == "message/rfc822"
    assert str(stored["ETag"]).strip('"').endswith("-3"), "three parts"


def test_missing_bucket_is_permanent(aws):
    targets = AwsTargets()
    with pytest.raises(PermanentActionError, match="NoSuchBucket"):
        run(targets.store(unique("absent"), "k", b"x", kms_key_arn=None, iam_role_arn=None))


# -- SNS --------------------------------------------------------------------------------


def assert_same_shape(ours: Any, theirs: Any, path: str, extra: set[str]) -> None:
    """Same keys and JSON types as the real notification; `extra` keys are ours alone."""
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs {type(theirs).__name__}"
    if isinstance(theirs, dict):
        added = {key for key in ours.keys() - theirs.keys() if f"{path}.{key}" not in extra}
        assert not added, f"{path}: keys SES does not write: {sorted(added)}"
        assert theirs.keys() <= ours.keys(), f"{path}: missing {sorted(theirs.keys() - ours)}"
        for key in theirs:
            assert_same_shape(ours[key], theirs[key], f"{path}.{key}", extra)
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), f"{path}: {len(ours)} items vs {len(theirs)}"
        for index, (mine, real) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_shape(mine, real, f"{path}[{index}]", extra)


def test_sns_notification_arrives_through_sqs_shaped_like_ses(aws):
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic_arn = sns.create_topic(Name=unique("inbound"))["TopicArn"]
    queue_url = sqs.create_queue(QueueName=unique("inbound"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    raw = fixture_message()
    message_id = MessageIdGenerator().next()

    action = SnsAction(type="sns", topic_arn=topic_arn)
    assert run(action.execute(context(raw, message_id), Services.of(AwsTargets()))) == CONTINUE

    deadline = time.monotonic() + 10
    messages: list[dict[str, Any]] = []
    while not messages and time.monotonic() < deadline:
        received = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)
        messages = received.get("Messages", [])
    assert len(messages) == 1
    envelope = json.loads(messages[0]["Body"])
    assert envelope["Type"] == "Notification"
    assert envelope["TopicArn"] == topic_arn
    assert envelope["Subject"] == SNS_SUBJECT
    notification = json.loads(envelope["Message"])

    real = fixture_notification()
    # The 2015 sample predates dmarcVerdict and receipt.action.encoding (reference section 5).
    assert_same_shape(notification, real, "", {".receipt.dmarcVerdict", ".receipt.action.encoding"})
    assert notification["content"] == raw.decode()
    assert notification["mail"]["messageId"] == message_id
    assert [h["name"] for h in notification["mail"]["headers"]] == [
        h["name"] for h in real["mail"]["headers"]
    ]
    assert notification["mail"]["commonHeaders"].keys() == real["mail"]["commonHeaders"].keys()
    assert notification["receipt"]["action"] == {
        "type": "SNS",
        "topicArn": topic_arn,
        "encoding": "UTF8",
    }


# -- Lambda -----------------------------------------------------------------------------


def test_lambda_receives_the_ses_event(aws):
    function_arn = make_function()
    message_id = MessageIdGenerator().next()
    ctx = context(fixture_message(), message_id)
    action = LambdaAction(type="lambda", function_arn=function_arn, invocation_type="event")
    event = ctx.lambda_event(action.receipt_action(message_id))

    # With nothing queued, the lambda-simple backend answers with the request payload.
    echoed = run(AwsTargets().invoke(function_arn, event, wait=True))

    assert echoed == event
    record: Any = lambda_event_record(event)
    assert record["eventSource"] == "aws:ses"
    assert record["ses"]["receipt"]["action"] == {
        "type": "Lambda",
        "functionArn": function_arn,
        "invocationType": "Event",
    }


def test_lambda_event_invocation_returns_nothing(aws):
    function_arn = make_function()
    message_id = MessageIdGenerator().next()
    action = LambdaAction(type="lambda", function_arn=function_arn)

    assert (
        run(action.execute(context(fixture_message(), message_id), Services.of(AwsTargets())))
        == CONTINUE
    )


@pytest.mark.parametrize(
    ("returned", "disposition"),
    [
        ('{"disposition": "STOP_RULE"}', "STOP_RULE"),
        ('{"disposition": "STOP_RULE_SET"}', "STOP_RULE_SET"),
        ('{"disposition": "CONTINUE"}', "CONTINUE"),
        ("{}", "CONTINUE"),
        ("null", "CONTINUE"),
        ("not json at all", "CONTINUE"),
    ],
    ids=["stop_rule", "stop_rule_set", "continue", "no_disposition", "null", "not_json"],
)
def test_lambda_request_response_disposition(aws, returned, disposition):
    function_arn = make_function()
    message_id = MessageIdGenerator().next()
    action = LambdaAction(
        type="lambda", function_arn=function_arn, invocation_type="request_response"
    )
    queue_lambda_results(aws, returned)

    result = run(action.execute(context(fixture_message(), message_id), Services.of(AwsTargets())))

    assert result.detail == disposition


class FakeLambda:
    """A Lambda client answering one way; moto's lambda-simple backend never fails."""

    def __init__(self, answer: dict[str, Any] | Exception, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay

    def invoke(self, **_: Any) -> dict[str, Any]:
        time.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeSession:
    def __init__(self, client: FakeLambda) -> None:
        self.lambda_client = client

    def client(self, service: str, **_: Any) -> FakeLambda:
        assert service == "lambda"
        return self.lambda_client


@pytest.mark.parametrize(
    "answer",
    [
        {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": io.BytesIO(b'{"e": 1}')},
        ReadTimeoutError(endpoint_url="http://lambda"),
    ],
    ids=["function_error", "read_timeout"],
)
def test_lambda_function_errors_and_timeouts_are_transient(answer):
    targets = AwsTargets(session=FakeSession(FakeLambda(answer)))
    with pytest.raises(TransientActionError):
        run(targets.invoke("arn:aws:lambda:us-east-1:123456789012:function:f", {}, wait=True))


def test_lambda_past_its_deadline_is_transient():
    targets = AwsTargets(
        session=FakeSession(FakeLambda({"StatusCode": 200}, delay=1.0)),
        lambda_timeout=0.2,
        connect_timeout=0.0,
        deadline_slack=0.0,
    )
    start = time.monotonic()
    with pytest.raises(TransientActionError, match="did not finish"):
        run(targets.invoke("arn:aws:lambda:us-east-1:123456789012:function:f", {}, wait=True))
    assert time.monotonic() - start < 1.0 + 1.5  # the thread is joined when run() ends


# -- failures ---------------------------------------------------------------------------


def free_port() -> int:
    import socket  # noqa: PLC0415 - only this test needs it

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_is_transient_and_quick(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    targets = AwsTargets(connect_timeout=2.0, read_timeout=2.0)
    calls = [
        targets.store("bucket", "key", b"x", kms_key_arn=None, iam_role_arn=None),
        targets.publish("arn:aws:sns:us-east-1:123456789012:t", {"notificationType": "Received"}),
        targets.invoke("arn:aws:lambda:us-east-1:123456789012:function:f", {}, wait=False),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(TransientActionError, match="EndpointConnectionError"):
            run(call)
        assert time.monotonic() - start < 5.0


def test_bounce_needs_a_relay():
    bounce = BounceRequest(
        "id", "a@example.com", "b@example.com", (), "550", "5.1.1", "", "mx", b""
    )
    with pytest.raises(PermanentActionError, match="no relay"):
        run(AwsTargets().send_bounce(bounce))


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("ThrottlingException", 400), True),
        (client_error("Throttled", 400), True),
        (client_error("KMSThrottlingException", 400), True),
        (client_error("RequestLimitExceeded", 400), True),
        (client_error("InternalError", 500), True),
        (client_error("", 502), True),
        (client_error("SomethingNew", 400), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchBucket", 404), False),
        (client_error("ResourceNotFoundException", 404), False),
        (client_error("NotFound", 404), False),
        (client_error("InvalidParameterValue", 400), False),
        (client_error("ValidationError", 400), False),
        (client_error("AuthorizationError", 403), False),
        (client_error("KMS.DisabledException", 400), False),
        (client_error("KMS.NotFoundException", 400), False),
        (client_error("KMSDisabled", 400), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (RuntimeError("surprise"), True),
    ],
    ids=lambda value: value if isinstance(value, bool) else type(value).__name__,
)
def test_classify(exc, transient):
    classified = classify(exc)
    assert classified.transient is transient
    assert isinstance(classified, TransientActionError if transient else PermanentActionError)


def test_every_call_runs_off_the_event_loop(aws):
    async def main() -> None:
        bucket = make_bucket()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        await AwsTargets().store(bucket, "k", b"x" * 100_000, kms_key_arn=None, iam_role_arn=None)
        ticker.cancel()
        assert ticks > 1

    asyncio.run(main())
