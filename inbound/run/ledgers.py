"""Where the runner records each step: the spool's dispatch state, an S3 object, or memory.

All three implement `inbound.core.steps.Ledger` (get, put, flush of `StepRecord`s by
`StepKey`) and keep the formats written before the runner existed, so state left by an older
version is read as it was meant: a restart after an upgrade repeats no succeeded action.

- `SpoolLedger` (`inbound serve`): the message's `DispatchState` in the spool, every record
  (failed ones too, with their attempts); `flush` saves it when a success is not on disk yet
  (through `save`, which the dispatcher batches with other messages' saves).
- `S3Ledger` (the SES Lambda handler, `ses consume`): `{"messageId", "steps": {KEY: result}}`
  in the bucket the message came from; only successes are kept.
- `MemoryLedger` (tests, and anything that needs no durability).

This module owns those formats; it must not decide what runs (the runner does) nor when a
message is finished or dead-lettered (the dispatcher does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from inbound.core.ports import SpoolPort
from inbound.core.steps import StepKey, StepRecord
from inbound.spool.retry import DispatchState, SpoolMeta


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
    """The steps of one spooled message, in its `DispatchState` (keys "RULE:ACTION")."""

    def __init__(
        self,
        spool: SpoolPort[SpoolMeta, DispatchState],
        message_id: str,
        state: DispatchState,
        *,
        save: Callable[[str, DispatchState], Awaitable[None]] | None = None,
    ) -> None:
        self.spool = spool
        self.message_id = message_id
        self.state = state
        # Saves the state durably, returning once it is on disk; default: a thread of its own.
        self._save = save
        # A success not on disk yet: saved before the next action runs, so a retry never
        # repeats it; after the last action the message is finished instead (a crash in
        # between repeats that action: at least once, SPEC section 7).
        self._unsaved = False

    def get(self, key: StepKey) -> StepRecord | None:
        return self.state.steps.get(str(key))

    def put(self, key: StepKey, record: StepRecord) -> None:
        self.state.steps[str(key)] = record
        self._unsaved = self._unsaved or record.succeeded

    async def flush(self) -> None:
        if self._unsaved:
            if self._save is not None:
                await self._save(self.message_id, self.state)
            else:
                await asyncio.to_thread(self.spool.save_state, self.message_id, self.state)
            self._unsaved = False


class S3Ledger:
    """The succeeded steps of one SES message (`KEY` -> recorded result), in an S3 object.

    With no bucket (inline content and no `INBOUND_SES_BUCKET`) nothing is kept: a redelivered
    event runs every action again."""

    def __init__(self, s3: Any, bucket: str | None, key: str, message_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.message_id = message_id
        self.steps: dict[str, str | None] = {}
        self._unsaved = False

    @classmethod
    def load(cls, s3: Any, bucket: str | None, key: str, message_id: str) -> S3Ledger:
        ledger = cls(s3, bucket, key, message_id)
        if bucket is None:
            return ledger
        try:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return ledger
        loaded = json.loads(data)
        steps = loaded.get("steps", {}) if isinstance(loaded, dict) else {}
        if isinstance(steps, dict):
            ledger.steps = {str(k): v if isinstance(v, str) else None for k, v in steps.items()}
        return ledger

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
        body = json.dumps({"messageId": self.message_id, "steps": self.steps}, sort_keys=True)
        await asyncio.to_thread(
            self.s3.put_object,
            Bucket=self.bucket,
            Key=self.key,
            Body=body.encode(),
            ContentType="application/json",
        )
        self._unsaved = False
