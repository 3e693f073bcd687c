"""The AWS target set (SPEC section 3, `--targets aws`): S3, SNS and Lambda through boto3, and
SES SendEmail for `forward` with `via: ses` (`SesOutbound`).

Configured only the standard AWS way (AWS_DEFAULT_REGION, not AWS_REGION; the credential chain,
AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_S3 …), so the same code talks to AWS, MinIO or a moto
server. botocore makes one attempt per call: the spool owns retries. Every call runs in a
thread with a deadline, and every failure becomes a transient or permanent action error
(`aws_errors.ERROR_TABLE`).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from inbound.core.errors import PermanentActionError, TransientActionError
from inbound.core.services import (
    BounceRequest,
    HttpClient,
    HttpRequest,
    HttpResponse,
    OutboundMail,
)
from inbound.message.notification import SNS_SUBJECT
from inbound.targets.aws_errors import classify
from inbound.targets.http import WebhookHttp

T = TypeVar("T")
# SES waits 30 s for a RequestResponse invocation (LambdaAction).
LAMBDA_TIMEOUT = 30.0
# Above this, S3 gets a multipart upload (S3 recommends it from 100 MB; SES allows 40 MB
# messages, and smaller parts make a slow link's timeout per part, not per message).
MULTIPART_THRESHOLD = 8 * 1024 * 1024
# Assumed-role credentials are renewed this long before they expire, so no call signs with
# credentials that lapse in flight.
ROLE_REFRESH_MARGIN = timedelta(minutes=5)
ROLE_SESSION_NAME = "inbound-ses-receipt"
# SES v2 SendEmail: a raw message of at most 40 MB (SPEC section 3b).
SES_MAX_MESSAGE_BYTES = 40 * 1024 * 1024


@dataclass(frozen=True)
class _RoleClient:
    client: Any
    expires: datetime


# SPEC section 3 names AWS_REGION, the variable of the Lambda runtime and the other AWS SDKs;
# boto3 itself reads only AWS_DEFAULT_REGION and the profile.
NO_REGION = "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)"


def aws_session() -> boto3.session.Session:
    """boto3's standard configuration, with AWS_REGION when boto3 finds no region itself."""
    session = boto3.session.Session()
    if session.region_name is None and os.environ.get("AWS_REGION"):
        return boto3.session.Session(region_name=os.environ["AWS_REGION"])
    return session


class AwsTargets:
    """The blob store, topic and function services on AWS (and a mailer that refuses).
    Clients are made on first use and shared (boto3 clients are thread-safe; the session is
    not, so it is only touched under a lock)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        lambda_timeout: float = LAMBDA_TIMEOUT,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        deadline_slack: float = 5.0,
        session: boto3.session.Session | None = None,
        http: HttpClient | None = None,
    ) -> None:
        # Webhooks: the same HTTP client whatever the targets (`targets.http`).
        self.http: HttpClient = http if http is not None else WebhookHttp()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.lambda_timeout = lambda_timeout
        self.multipart_threshold = multipart_threshold
        # Added to botocore's own timeouts for the deadline of a whole call (DNS, signing,
        # reading the body): botocore's timeouts normally fire first and say more.
        self.deadline_slack = deadline_slack
        self._session = session or aws_session()
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._roles: dict[str, _RoleClient] = {}

    # -- services ----------------------------------------------------------------------------

    async def post(self, request: HttpRequest) -> HttpResponse:
        """A webhook's POST, through the HTTP client (the same for every target set)."""
        return await self.http.post(request)

    async def store(
        self,
        bucket: str,
        key: str,
        content: bytes,
        *,
        kms_key_arn: str | None,
        iam_role_arn: str | None,
        content_type: str = "message/rfc822",
    ) -> None:
        extra: dict[str, str] = {"ContentType": content_type}
        if kms_key_arn:
            extra |= {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_arn}

        def put() -> None:
            s3 = self._role_s3(iam_role_arn) if iam_role_arn else self._client("s3")
            if len(content) <= self.multipart_threshold:
                s3.put_object(Bucket=bucket, Key=key, Body=content, **extra)
                return
            # BytesIO over bytes shares the buffer until written to: no second copy of 40 MB.
            transfer = TransferConfig(
                multipart_threshold=self.multipart_threshold,
                multipart_chunksize=self.multipart_threshold,
                max_concurrency=4,
            )
            s3.upload_fileobj(io.BytesIO(content), bucket, key, ExtraArgs=extra, Config=transfer)

        parts = max(1, -(-len(content) // self.multipart_threshold))
        await self._call(put, self._deadline() * parts)

    async def url(self, bucket: str, key: str, *, expires_in: int) -> str:
        # Signed locally (no request), on the configured endpoint (MinIO, moto server); it may
        # still fetch credentials, so it runs as any call does. S3 caps SigV4 URLs at 7 days,
        # and temporary credentials end them sooner.
        def sign() -> str:
            params = {"Bucket": bucket, "Key": key}
            client = self._client("s3")
            return str(client.generate_presigned_url("get_object", params, expires_in))

        return await self._call(sign, self._deadline())

    async def publish(self, topic_arn: str, notification: dict[str, object]) -> None:
        # Compact and non-ASCII kept as is, as SES publishes (and as the local target writes).
        message = json.dumps(notification, separators=(",", ":"), ensure_ascii=False)

        def send() -> None:
            self._client("sns").publish(TopicArn=topic_arn, Message=message, Subject=SNS_SUBJECT)

        await self._call(send, self._deadline())

    async def invoke(
        self, function_arn: str, event: dict[str, object], *, wait: bool
    ) -> object | None:
        payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

        def call() -> object | None:
            response = self._client("lambda").invoke(
                FunctionName=function_arn,
                InvocationType="RequestResponse" if wait else "Event",
                Payload=payload,
            )
            body = response["Payload"].read() if "Payload" in response else b""
            if response.get("FunctionError"):
                # The function ran and failed (or timed out inside Lambda): SES retries
                # failed actions, so do we.
                detail = body[:200].decode("utf-8", "replace")
                raise TransientActionError(
                    f"function {function_arn} failed ({response['FunctionError']}): {detail}"
                )
            if not wait or not body:
                return None
            try:
                result: object = json.loads(body)
            except ValueError:
                return body.decode("utf-8", "replace")
            return result

        return await self._call(
            call, self.lambda_timeout + self.connect_timeout + self.deadline_slack
        )

    async def send_bounce(self, bounce: BounceRequest) -> None:
        raise PermanentActionError("no relay configured for bounce DSNs")

    # -- plumbing ---------------------------------------------------------------------------

    def _deadline(self) -> float:
        return self.connect_timeout + self.read_timeout + self.deadline_slack

    async def _call(self, function: Callable[[], T], timeout: float) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(function), timeout)
        except TimeoutError:
            # The thread may still finish; every call here is safe to repeat (S3 keys are
            # deterministic; a second SNS publish or Lambda event is at-least-once delivery).
            raise TransientActionError(f"AWS call did not finish within {timeout:g} s") from None
        except (TransientActionError, PermanentActionError):
            raise
        except Exception as exc:
            raise classify(exc) from exc

    def _config(self, service: str) -> Config:
        read = self.read_timeout
        if service == "lambda":
            # RequestResponse holds the connection while the function runs (up to 30 s).
            read = max(read, self.lambda_timeout + 1.0)
        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=read,
            retries={"max_attempts": 1, "mode": "standard"},
            # Presigned URLs too (botocore presigns with SigV2 otherwise, which S3 retires).
            signature_version="s3v4" if service == "s3" else None,
        )

    def _client(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = self._session.client(service, config=self._config(service))
                self._clients[service] = client
            return client

    def _role_s3(self, role_arn: str) -> Any:
        """An S3 client signing with `role_arn`'s credentials (SES S3Action.IamRoleArn)."""
        now = datetime.now(UTC)
        with self._lock:
            cached = self._roles.get(role_arn)
        if cached is not None and now < cached.expires - ROLE_REFRESH_MARGIN:
            return cached.client
        response = self._client("sts").assume_role(
            RoleArn=role_arn, RoleSessionName=ROLE_SESSION_NAME
        )
        credentials = response["Credentials"]
        expires = credentials["Expiration"]
        if not isinstance(expires, datetime):
            expires = now + timedelta(minutes=15)  # the shortest session AssumeRole grants
        with self._lock:
            client = self._session.client(
                "s3",
                config=self._config("s3"),
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
            )
            self._roles[role_arn] = _RoleClient(client, expires)
        return client


class SesOutbound:
    """The outbound service of `forward` with `via: ses`: SES v2 `SendEmail` with
    `Content.Raw`, one call per send, through the AWS target set's clients, deadline and error
    table. SES takes the sender from the message's From (which must be a verified identity:
    otherwise `MessageRejected`, "Email address is not verified", a permanent failure) and
    signs it with the identity's DKIM key."""

    def __init__(self, targets: AwsTargets) -> None:
        self.targets = targets

    async def send(self, mail: OutboundMail) -> None:
        def call() -> None:
            self.targets._client("sesv2").send_email(
                Destination={"ToAddresses": list(mail.rcpt_to)},
                Content={"Raw": {"Data": mail.content}},
            )

        await self.targets._call(call, self.targets._deadline())

    async def max_size(self) -> int | None:
        return SES_MAX_MESSAGE_BYTES
