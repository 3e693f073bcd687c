"""The S3 + SQS spool of a receiver that keeps no state (SPEC section 7b).

This module owns `inbound serve --spool s3://BUCKET/PREFIX --queue URL`: the `Committer` and
`MessageWriter` the SMTP sessions write through (the same ports as the local spool's, so intake
is the same). A message is kept while it is received in memory, then in a temporary file under
the data directory (the scanners and the fact reader read it there); its commit streams it to
S3 at PREFIX + MESSAGEID with the prepended headers (SPEC section 5), one `put_object` up to
`PART_BYTES`, a multipart upload of `PART_BYTES` parts above (never the whole message in
memory), then sends SES's `Received` notification (an `S3` action) to the queue with the
rule-set digest as the message attribute `DIGEST_ATTRIBUTE`. The rule set is stored once per
digest at PREFIX + rules/DIGEST.yaml before the first message that names it.

The commit returns only when both the object and the notification were accepted; any failure,
or the deadline (`--data-timeout`) passing first, raises `SpoolWriteError` and the session
answers 451 4.3.0. A commit past its deadline may still finish its upload in its thread, but it
sends no notification once its caller gave up: an object no notification names is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

from botocore.config import Config
from botocore.exceptions import ClientError

from inbound.core.errors import InputError
from inbound.core.ports import MessageSource, SpoolError, SpoolWriteError
from inbound.datadir import create_file, make_dir
from inbound.message.headers import prepend_headers
from inbound.message.notification import (
    DIGEST_ATTRIBUTE,
    mail_object,
    receipt_object,
    received_notification,
)
from inbound.message.read import MAX_HEADER_BYTES
from inbound.message.source import BytesSource, FileSource, header_end
from inbound.spool.retry import SpoolMeta
from inbound.targets.aws import NO_REGION, aws_session
from inbound.targets.aws_errors import lost_conditional_write

# S3's smallest part (but the last) is 5 MiB; 8 MiB parts keep a 40 MB message to 5 requests.
MIN_PART_BYTES = 5 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024
# Kept in memory until a message outgrows this (as the local spool's writer does).
MEMORY_BYTES = 64 * 1024
# Commits to S3 and SQS at once (each a thread blocked on the network).
UPLOADERS = 16


@dataclass(frozen=True)
class S3Spool:
    """Where messages go: `s3://BUCKET/PREFIX` and the queue their notifications go to."""

    bucket: str
    prefix: str
    queue_url: str

    @classmethod
    def parse(cls, url: str, queue_url: str | None) -> S3Spool:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InputError(f"--spool {url}: expected s3://BUCKET/PREFIX")
        if not queue_url:
            raise InputError(f"--spool {url}: needs --queue SQS_QUEUE_URL for the notifications")
        return cls(parts.netloc, parts.path.lstrip("/"), queue_url)

    def key(self, message_id: str) -> str:
        return f"{self.prefix}{message_id}"

    def rules_key(self, digest: str) -> str:
        return f"{self.prefix}rules/{digest}.yaml"


class S3Writer:
    """One message being received: memory up to `MEMORY_BYTES`, then a temporary file."""

    def __init__(self, message_id: str, tmp_dir: Path) -> None:
        self.message_id = message_id
        self._path = tmp_dir / message_id
        self._buffer: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._size = 0
        self._closed = False
        # Set when the commit's caller gave up (its deadline): no notification may follow.
        self.abandoned = threading.Event()

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        if self._closed:
            raise SpoolError(f"message {self.message_id}: the writer is closed")
        try:
            if self._buffer is not None:
                self._buffer += chunk
                if len(self._buffer) > MEMORY_BYTES:
                    self._file = create_file(self._path, buffering=MEMORY_BYTES)
                    self._file.write(self._buffer)
                    self._buffer = None
            else:
                assert self._file is not None
                self._file.write(chunk)
        except OSError as exc:
            self.abort()
            raise SpoolWriteError(
                f"message {self.message_id}: cannot write: {exc.strerror}"
            ) from exc
        self._size += len(chunk)

    def source(self) -> MessageSource:
        if self._closed:
            raise SpoolError(f"message {self.message_id}: the writer is closed")
        if self._buffer is not None:
            return BytesSource(bytes(self._buffer))
        assert self._file is not None
        self._file.flush()
        return FileSource(self._path)

    def commit(self, meta: SpoolMeta) -> None:
        raise SpoolError("an S3 message is committed by its S3Committer")

    def abort(self) -> None:
        """Forget the message; never raises."""
        self._closed = True
        self._buffer = None
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                os.unlink(self._path)


class S3Committer:
    """Commits for the SMTP sessions: S3 object, then SQS notification, within a deadline."""

    def __init__(
        self,
        where: S3Spool,
        tmp_dir: Path,
        *,
        timeout: float,
        part_bytes: int = PART_BYTES,
        session: Any = None,
    ) -> None:
        self.where = where
        self.tmp_dir = tmp_dir
        self.timeout = timeout
        # Above the longest header block read before the first part, too.
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        session = session if session is not None else aws_session()
        if session.region_name is None:  # at start, not as a 451 for every message
            raise InputError(NO_REGION)
        # One attempt more than none, each bounded: a dead endpoint fails well inside the
        # deadline, and the sender retries later (451 4.3.0).
        config = Config(
            connect_timeout=min(5.0, timeout),
            read_timeout=min(60.0, timeout),
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=UPLOADERS,
        )
        self.s3 = session.client("s3", config=config)
        self.sqs = session.client("sqs", config=config)
        self._texts: dict[str, str] = {}
        self._stored: set[str] = set()
        self._lock = threading.Lock()
        # Held while a rule set is put: the first commits under a new one wait for one PUT.
        self._storing = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- the rule book's store: texts in memory, each put in S3 before its first message -----

    def save_rules(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self._lock:
            self._texts[digest] = text
        return digest

    def load_rules(self, digest: str) -> str:
        with self._lock:
            return self._texts[digest]

    # -- the Committer port ------------------------------------------------------------------

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(UPLOADERS, thread_name_prefix="s3-spool")

    def recover(self) -> None:
        """Start-up of the process that owns the data directory: no temporary file of an
        earlier run is anyone's (none was acknowledged)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        make_dir(self.tmp_dir, exist_ok=True)

    def open_writer(self, message_id: str) -> S3Writer:
        return S3Writer(message_id, self.tmp_dir)

    async def commit(self, writer: S3Writer, meta: SpoolMeta) -> None:
        if self._pool is None:
            raise SpoolError("the S3 committer is not running")
        # Taken here, on the session's loop: an abort (the client gone) closes the writer on it.
        source = writer.source()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, self._store, writer, source, meta)
        try:
            await asyncio.wait_for(asyncio.shield(work), self.timeout)
        except TimeoutError:
            writer.abandoned.set()
            raise SpoolWriteError(f"message {meta.message_id}: S3/SQS past the deadline") from None
        except asyncio.CancelledError:
            writer.abandoned.set()
            raise
        finally:
            if work.done():
                writer.abort()
            else:
                work.add_done_callback(lambda _: writer.abort())

    async def close(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown)

    # -- one commit, in a thread ---------------------------------------------------------------

    def _store(self, writer: S3Writer, source: MessageSource, meta: SpoolMeta) -> None:
        try:
            self._store_rules(meta.rules_digest)
            head = self._upload(source, meta)
            if writer.abandoned.is_set():
                raise SpoolWriteError(f"message {meta.message_id}: abandoned before queueing")
            self.notify(head, meta)
        except SpoolError:
            raise
        except Exception as exc:  # botocore's errors, a vanished temporary file, ...
            raise SpoolWriteError(f"message {meta.message_id}: {type(exc).__name__}") from exc

    def store(self, source: MessageSource, meta: SpoolMeta) -> bytes:
        """The rule set (once per digest) and the message at PREFIX + ID, as a commit stores
        them; returns the new header block for `notify`. For `inbound spool drain`: no writer,
        no deadline (botocore's own timeouts), botocore's errors raised as they come."""
        self._store_rules(meta.rules_digest)
        return self._upload(source, meta)

    def _store_rules(self, digest: str) -> None:
        """PREFIX + rules/DIGEST.yaml once per digest (SPEC 7b): once in this process, and
        not again over another receiver's copy (`If-None-Match: *`; the same bytes anyway)."""
        with self._lock:
            if digest in self._stored:
                return
        with self._storing:
            with self._lock:
                if digest in self._stored:
                    return  # stored while this commit waited
                text = self._texts[digest]
            try:
                self.s3.put_object(
                    Bucket=self.where.bucket,
                    Key=self.where.rules_key(digest),
                    Body=text.encode("utf-8"),
                    ContentType="application/yaml",
                    IfNoneMatch="*",
                )
            except ClientError as exc:
                if not lost_conditional_write(exc):  # else another receiver stored it
                    raise
            with self._lock:
                self._stored.add(digest)

    def _upload(self, source: MessageSource, meta: SpoolMeta) -> bytes:
        """The message with its prepended headers at PREFIX + ID; its new header block."""
        key, bucket = self.where.key(meta.message_id), self.where.bucket
        with source.open() as stream:
            first = stream.read(MAX_HEADER_BYTES)
            end = header_end(first)
            cut = len(first) if end is None else end
            head = prepend_headers(first[:cut], meta.received())
            size = len(head) + source.size - cut
            if size <= self.part_bytes:
                body = head + first[cut:] + stream.read()
                self.s3.put_object(Bucket=bucket, Key=key, Body=body)
                return head
            upload = self.s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            try:
                parts = []
                for number, part in enumerate(
                    _parts(head + first[cut:], stream, self.part_bytes), start=1
                ):
                    answer = self.s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=part
                    )
                    parts.append({"ETag": answer["ETag"], "PartNumber": number})
                self.s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                with contextlib.suppress(Exception):  # the bucket's lifecycle rule, else
                    self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
                raise
        return head

    def notify(self, head: bytes, meta: SpoolMeta) -> None:
        """The message's `Received` notification to the queue, with the digest attribute."""
        now = datetime.now(UTC)
        action = {
            "type": "S3",
            "bucketName": self.where.bucket,
            "objectKeyPrefix": self.where.prefix,
            "objectKey": self.where.key(meta.message_id),
        }
        mail = mail_object(
            message_id=meta.message_id,
            timestamp=meta.received_at,
            source=meta.envelope.mail_from,
            raw=head,  # the `mail` object reads the header block only
        )
        receipt = receipt_object(
            timestamp=meta.received_at,
            processing_ms=max(0, int((now - meta.received_at).total_seconds() * 1000)),
            recipients=meta.envelope.rcpt_tos,
            verdicts=meta.verdicts,
            action=action,
        )
        body = json.dumps(received_notification(mail, receipt), separators=(",", ":"))
        self.sqs.send_message(
            QueueUrl=self.where.queue_url,
            MessageBody=body,
            MessageAttributes={
                DIGEST_ATTRIBUTE: {"DataType": "String", "StringValue": meta.rules_digest}
            },
        )


def _parts(start: bytes, stream: BinaryIO, size: int) -> Iterator[bytearray]:
    """`start` then the rest of `stream`, in parts of `size` bytes (the last one shorter), read
    into one buffer used again for each part: a part's upload is done before the next is read,
    so a message of any size costs one part of memory."""
    # A file or memory stream (`MessageSource.open`): both read into a buffer.
    readinto = cast("io.BufferedIOBase", stream).readinto
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = len(start)
    view[:filled] = start
    while True:
        while filled < size and (got := readinto(view[filled:])):
            filled += got
        if filled < size:
            break
        yield buffer
        filled = 0
    view.release()
    if filled:
        yield buffer[:filled]
