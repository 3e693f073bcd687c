"""The local target set (SPEC section 3): S3 as files, SNS and Lambda as JSON lines.

Everything lands under DATA_DIR, and no path can leave it: buckets and prefixes are validated
when the rules load, and every path is checked again here. Files are written durably
(temporary file, fsync, rename) so a retry after a crash finds whole files only, and JSON lines
are appended whole or not at all; all of it private to the receiver's user (`inbound.datadir`).

S3 objects are written in batches by one thread (`inbound.batch`, `inbound.targets.files`):
every object stored while the previous batch was being written goes in the next, made durable
together. A store returns only once its batch is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from inbound.batch import Batcher
from inbound.config.fields import function_name, topic_name
from inbound.core.errors import PermanentActionError, TransientActionError
from inbound.core.ids import MessageIdGenerator
from inbound.core.services import (
    BounceRequest,
    HttpClient,
    HttpRequest,
    HttpResponse,
    OutboundMail,
)
from inbound.datadir import fsync_dir, open_fd
from inbound.message.notification import sns_envelope
from inbound.targets.files import FileBatchWriter, make_dirs_synced, write_at
from inbound.targets.http import WebhookHttp

LambdaFunction = Callable[[dict[str, object], object], object]
# SES waits 30 s for a RequestResponse invocation (LambdaAction).
LAMBDA_TIMEOUT = 30.0


class LocalTargets:
    """Every service as files under DATA_DIR: blobs, topics, functions, and a bounce outbox."""

    def __init__(
        self,
        data_dir: Path,
        *,
        functions: Mapping[str, LambdaFunction] | None = None,
        lambda_timeout: float = LAMBDA_TIMEOUT,
        http: HttpClient | None = None,
    ) -> None:
        self.root = data_dir.resolve()
        # Webhooks: the same HTTP client whatever the targets (`targets.http`).
        self.http: HttpClient = http if http is not None else WebhookHttp()
        self.functions = dict(functions or {})
        self.lambda_timeout = lambda_timeout
        self._ids = MessageIdGenerator()
        self._locks: dict[Path, asyncio.Lock] = {}
        writer = FileBatchWriter()
        self._writes: Batcher[tuple[Path, bytes], None] = Batcher(
            "local-s3-write", lambda batch: _write_objects(batch, writer), max_batch=64
        )

    def _inside(self, *parts: str) -> Path:
        # Buckets, prefixes and topic names were validated when the rules loaded; this is the
        # second line of defence, without a file-system call on the event loop (and with
        # string operations: pathlib's parsing was a tenth of a dispatch's cost).
        relative = "/".join(parts)
        pieces = relative.split("/")
        if relative.startswith("/") or ".." in pieces or "\0" in relative:
            raise PermanentActionError(f"{relative!r} leaves the data directory")
        return self.root / "/".join(piece for piece in pieces if piece not in ("", "."))

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
        path = self._inside("s3", bucket, key.lstrip("/"))
        await self._writes.submit((path, content))

    async def url(self, bucket: str, key: str, *, expires_in: int) -> str:
        # The file itself: readable by the receiver's user only, and valid as long as it is.
        return self._inside("s3", bucket, key.lstrip("/")).as_uri()

    async def publish(self, topic_arn: str, notification: dict[str, object]) -> None:
        envelope = sns_envelope(
            topic_arn=topic_arn,
            message=notification,
            sns_message_id=self._ids.next(),
            timestamp=datetime.now(UTC),
        )
        await self._append(self._inside("sns", f"{topic_name(topic_arn)}.jsonl"), envelope)

    async def invoke(
        self, function_arn: str, event: dict[str, object], *, wait: bool
    ) -> object | None:
        name = function_name(function_arn)
        function = self.functions.get(name)
        if function is None:
            await self._append(self._inside("lambda", f"{name}.jsonl"), event)
            return None
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(function, event, None), self.lambda_timeout
            )
        except TimeoutError:
            raise TransientActionError(f"function {name} timed out") from None
        except Exception as exc:
            # A function error is worth retrying, as SES retries failed actions.
            raise TransientActionError(f"function {name} failed: {type(exc).__name__}") from exc

    async def send_bounce(self, bounce: BounceRequest) -> None:
        record = {
            k: v for k, v in asdict(bounce).items() if k not in ("original_headers", "arrival")
        }
        await self._append(self._inside("bounce", "outbox.jsonl"), record)

    async def _append(self, path: Path, record: Mapping[str, object]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(_append_line, path, line.encode("utf-8"))


class LocalOutbox:
    """The outbound service without `--relay` (SPEC section 3b): each message written whole to
    `DATA_DIR/forward/MESSAGEID/N.eml`, then its envelope appended to `forward/outbox.jsonl`.

    A retry writes the same file again (the name is the message ID and the send's index) and
    appends its line only once the file is durable, so every line names a whole file."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir.resolve() / "forward"
        self._writer = FileBatchWriter(syncfs=None)
        self._lock = asyncio.Lock()

    async def send(self, mail: OutboundMail) -> None:
        # Message IDs are the receiver's own (letters, digits, dashes); checked all the same.
        if not mail.message_id or "/" in mail.message_id or mail.message_id.startswith("."):
            raise PermanentActionError(f"not a message ID: {mail.message_id!r}")
        name = f"{mail.message_id}/{mail.index}.eml"
        # One send at a time: the writer is run by one thread at a time, the file one line at a
        # time (a local outbox is for development, not throughput).
        async with self._lock:
            [error] = await asyncio.to_thread(
                self._writer.write_batch, [(self.root / name, mail.content)]
            )
            if isinstance(error, OSError):
                raise TransientActionError(f"cannot write {name}: {error.strerror}") from error
            if error is not None:
                raise error
            await asyncio.to_thread(_append_line, self.root / "outbox.jsonl", self._line(mail))

    def _line(self, mail: OutboundMail) -> bytes:
        record = {
            "messageId": mail.message_id,
            "index": mail.index,
            "mailFrom": mail.mail_from,
            "rcptTo": list(mail.rcpt_to),
            "file": f"{mail.message_id}/{mail.index}.eml",
            "size": len(mail.content),
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")

    async def max_size(self) -> int | None:
        return None


# The dispatcher forgets its spooled copy once an action succeeded, so "succeeded" must mean
# "survives a power loss": file contents, the rename and every new directory entry are synced.


def _write_objects(
    batch: Sequence[tuple[Path, bytes]], writer: FileBatchWriter
) -> list[Exception | None]:
    errors = writer.write_batch(batch)
    for i, error in enumerate(errors):
        if isinstance(error, OSError):
            failure = TransientActionError(f"cannot write {batch[i][0].name}: {error.strerror}")
            failure.__cause__ = error
            errors[i] = failure
    return errors


# A JSON-lines file holds whole lines only. An append cut short (ENOSPC, EDQUOT, EIO, a crash)
# leaves part of a line; the retry's whole line after it would make one line that is not JSON,
# and lose both records for every reader. So a failed append is cut back to where it began, and
# whatever follows the last newline (left by a crash) is cut before the next append: that
# record's action did not succeed, so it will be appended again, whole.

_SCAN = 64 * 1024


def _append_line(path: Path, line: bytes) -> None:
    try:
        make_dirs_synced(path.parent)
        new = not path.exists()
        fd = open_fd(path, os.O_RDWR | os.O_CREAT)
        try:
            _append_whole(fd, line)
        finally:
            os.close(fd)
        if new:
            fsync_dir(path.parent)
    except OSError as exc:
        raise TransientActionError(f"cannot append to {path.name}: {exc.strerror}") from exc


def _append_whole(fd: int, line: bytes) -> None:
    end = _whole_lines(fd)
    try:
        write_at(fd, line, end)
        os.fsync(fd)
    except OSError:
        # If even this fails, the next append cuts the partial line before it writes.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
            os.fsync(fd)
        raise


def _whole_lines(fd: int) -> int:
    """The length of the file's complete lines; anything after the last newline is cut."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size  # the usual case: one byte read
    end = size
    while end > 0:
        start = max(0, end - _SCAN)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
        os.fsync(fd)
    return end
