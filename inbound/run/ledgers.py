"""Where the runner records each step: the spool's dispatch state, an S3 object, or memory.

All three implement `inbound.core.steps.Ledger` (get, put, flush of `StepRecord`s by
`StepKey`) and keep the formats written before the runner existed, so state left by an older
version is read as it was meant: a restart after an upgrade repeats no succeeded action.

- `SpoolLedger` (`inbound serve`): the message's `DispatchState` in the spool, every record
  (failed ones too, with their attempts, saved when the message is deferred); `flush` appends
  the successes not on disk yet to the spool's step journal (through `record`, which the
  dispatcher batches with other messages' successes: one write and one fdatasync per batch).
- `S3Ledger` (the SES Lambda handler, `ses consume`): `{"messageId", "steps": {KEY: result},
  "claim": {"owner", "until"}}` in the bucket the message came from; only successes are kept,
  and every write is conditional, so two runs of one message at once cannot both run it.
- `MemoryLedger` (tests, and anything that needs no durability).

This module owns those formats; it must not decide what runs (the runner does) nor when a
message is finished or dead-lettered (the dispatcher does).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import ClientError

from inbound.core.errors import InboundError
from inbound.core.ports import SpoolPort
from inbound.core.steps import StepKey, StepRecord
from inbound.spool.retry import DispatchState, SpoolMeta
from inbound.targets.aws_errors import lost_conditional_write


class MemoryLedger:
    """Records in a dict; `flush` counts how often it was asked (tests read `flushes`)."""

    def __init__(self, records: dict[StepKey, StepRecord] | None = None) -> None:
        self.records: dict[StepKey, StepRecord] = dict(records or {})
        self.flushes = 0

    def get(self, key: StepKey) -> StepRecord | None:
        return self.records.get(key)

    def put(self, key: StepKey, record: StepRecord) -> None:
        self.records[key] = record

    async def flush(self) -> None:
        self.flushes += 1


class SpoolLedger:
    """The steps of one spooled message (keys "RULE:ACTION"): its `DispatchState`, and the
    spool's step journal for the successes not yet in a state file."""

    def __init__(
        self,
        spool: SpoolPort[SpoolMeta, DispatchState],
        message_id: str,
        state: DispatchState,
        *,
        record: Callable[[str, list[tuple[str, StepRecord]]], Awaitable[None]] | None = None,
    ) -> None:
        self.spool = spool
        self.message_id = message_id
        self.state = state
        # Makes successes durable (the spool's journal), returning once they are; default: a
        # thread of its own. The dispatcher batches them with other messages' successes.
        self._record = record
        # Successes not on disk yet: recorded before the next action runs, so a retry never
        # repeats one; after the last action the message is finished instead (a crash in
        # between repeats that action: at least once, SPEC section 7). Failures are saved
        # with the deferral (the scheduler writes the whole state then).
        self._unsaved: list[tuple[str, StepRecord]] = []

    def get(self, key: StepKey) -> StepRecord | None:
        return self.state.steps.get(str(key))

    def put(self, key: StepKey, record: StepRecord) -> None:
        text = str(key)
        self.state.steps[text] = record
        if record.succeeded:
            self._unsaved.append((text, record))

    async def flush(self) -> None:
        if not self._unsaved:
            return
        unsaved, self._unsaved = self._unsaved, []
        try:
            if self._record is not None:
                await self._record(self.message_id, unsaved)
            else:
                steps = [(self.message_id, key, record) for key, record in unsaved]
                await asyncio.to_thread(self.spool.record_steps, steps)
        except BaseException:
            self._unsaved = unsaved + self._unsaved
            raise


class MessageBusyError(InboundError):
    """Another run holds this message's claim (a duplicate delivery running at the same time):
    this one must not run it; it is delivered again once `until` (epoch seconds) has passed."""

    def __init__(self, message_id: str, until: float) -> None:
        super().__init__(f"message {message_id} is being run elsewhere until {until:.0f}")
        self.message_id = message_id
        self.until = until


class ClaimLostError(InboundError):
    """This run's claim expired and another run took the message over: it records nothing
    more (the other run decides what is left)."""


class S3Ledger:
    """The succeeded steps of one SES message (`KEY` -> recorded result), in an S3 object, and
    the claim of the run that is running it.

    Every write is conditional on the object being as this run last saw it (`If-Match` its
    ETag, or `If-None-Match: *` when there was none), so two runs of the same message at the
    same time (SQS delivers a notification twice; Lambda retries an invocation) cannot both
    go on: `claim` writes `{"claim": {"owner", "until"}}` first, and the run that loses the
    race, or finds a live claim of another, gets `MessageBusyError` before it runs any action. A
    claim ends with `release` (the run is over, failed or not) or at `until` (its run died).

    With no bucket (inline content and no `INBOUND_SES_BUCKET`) nothing is kept: a redelivered
    event runs every action again."""

    def __init__(self, s3: Any, bucket: str | None, key: str, message_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.message_id = message_id
        self.steps: dict[str, str | None] = {}
        self.claim_of: dict[str, Any] | None = None  # as loaded or written
        self.owner = uuid.uuid4().hex
        self._etag: str | None = None  # None: no object (yet)
        self._unsaved = False

    @classmethod
    def load(cls, s3: Any, bucket: str | None, key: str, message_id: str) -> S3Ledger:
        ledger = cls(s3, bucket, key, message_id)
        if bucket is None:
            return ledger
        try:
            response = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            return ledger
        loaded = json.loads(response["Body"].read())
        ledger._etag = response.get("ETag")
        steps = loaded.get("steps", {}) if isinstance(loaded, dict) else {}
        if isinstance(steps, dict):
            ledger.steps = {str(k): v if isinstance(v, str) else None for k, v in steps.items()}
        claim = loaded.get("claim") if isinstance(loaded, dict) else None
        if isinstance(claim, dict) and isinstance(claim.get("until"), int | float):
            ledger.claim_of = claim
        return ledger

    def claim(self, hold: float, *, now: float | None = None) -> None:
        """Take the message for `hold` seconds, or raise `MessageBusyError`."""
        if self.bucket is None:
            return
        now = time.time() if now is None else now
        held = self.claim_of
        if held is not None and held.get("owner") != self.owner and held["until"] > now:
            raise MessageBusyError(self.message_id, float(held["until"]))
        self.claim_of = {"owner": self.owner, "until": round(now + hold, 3)}
        try:
            self._write()
        except ClaimLostError:
            raise MessageBusyError(self.message_id, now + hold) from None

    @property
    def holding(self) -> bool:
        """This run's claim is (as far as it knows) in force."""
        return self.claim_of is not None and self.claim_of.get("owner") == self.owner

    def release(self) -> None:
        """The run is over: the next delivery need not wait (written by the next `flush`)."""
        if self.holding:
            self.claim_of = None
            self._unsaved = True

    def get(self, key: StepKey) -> StepRecord | None:
        text = str(key)
        if text not in self.steps:
            return None
        return StepRecord("succeeded", 1, None, self.steps[text])

    def put(self, key: StepKey, record: StepRecord) -> None:
        if record.succeeded:  # a failure raises to SES, which delivers the event again
            self.steps[str(key)] = record.result
            self._unsaved = True

    async def flush(self) -> None:
        if not self._unsaved or self.bucket is None:
            return
        await asyncio.to_thread(self._write)

    def _write(self) -> None:
        document: dict[str, Any] = {"messageId": self.message_id, "steps": self.steps}
        if self.claim_of is not None:
            document["claim"] = self.claim_of
        condition = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=json.dumps(document, sort_keys=True).encode(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            if lost_conditional_write(exc):
                raise ClaimLostError(f"message {self.message_id}: {self.key} changed") from None
            raise
        self._etag = response.get("ETag")
        self._unsaved = False
