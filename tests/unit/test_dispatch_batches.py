"""The dispatcher's group commit: messages due together are read, stored and removed in batches
(issue 13), and every one is still stored whole, once, and removed from the queue."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inbound.core.envelope import Connection, Envelope
from inbound.core.ids import MessageIdGenerator
from inbound.core.services import Services
from inbound.core.verdicts import Verdict, Verdicts
from inbound.dispatch import Dispatcher
from inbound.observe.metrics import DispatchMetrics
from inbound.rules.book import RuleBook
from inbound.schedule import Scheduler
from inbound.spool.store import DispatchState, Spool, SpoolMeta
from inbound.targets import files
from inbound.targets.local import LocalTargets

IDS = MessageIdGenerator()
DEADLINE = 30.0
MESSAGES = 40
RULES = """\
version: 1
name: batches
domains: [example.com]
rules:
  - name: store
    actions:
      - {type: s3, bucket: mail, prefix: in/}
"""


def body(n: int) -> bytes:
    return b"From: a@sender.example\r\nSubject: %d\r\n\r\nBody %d.\r\n" % (n, n)


def spool_messages(spool: Spool, digest: str, count: int) -> list[str]:
    ids = []
    for n in range(count):
        message_id = IDS.next()
        data = body(n)
        writer = spool.open_writer(message_id)
        writer.write(data)
        writer.commit(
            SpoolMeta(
                message_id=message_id,
                envelope=Envelope("a@sender.example", ("rcpt@example.com",)),
                connection=Connection.of("192.0.2.1", "client.example"),
                received_at=datetime.now(UTC),
                rules_digest=digest,
                hostname="mx.example",
                verdicts=Verdicts(spf=Verdict.PASS),
                size=len(data),
            )
        )
        ids.append(message_id)
    return ids


def test_messages_due_together_are_stored_and_removed_with_few_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    spool = Spool(tmp_path / "spool")
    book = RuleBook(tmp_path / "rules.yaml", save_text=spool.save_rules, load_text=spool.load_rules)
    ids = spool_messages(spool, book.current.digest, MESSAGES)

    syncs = {"file": 0, "folder": 0, "filesystem": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        syncs["file" if stat.S_ISREG(os.fstat(fd).st_mode) else "folder"] += 1
        real_fsync(fd)

    def syncfs(fd: int) -> None:
        syncs["filesystem"] += 1
        os.sync()  # the stronger call, wherever syncfs is missing

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(files, "_SYNCFS", syncfs)
    metrics = DispatchMetrics()
    dispatcher = Dispatcher(
        spool, book, Services.of(LocalTargets(tmp_path / "data")), metrics=metrics
    )
    scheduler = Scheduler(spool, dispatcher.process, metrics=metrics, rescan_every=600.0)

    async def test() -> None:
        scheduler.load_queue()
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        deadline = time.monotonic() + DEADLINE
        while spool.queued():
            assert time.monotonic() < deadline, "the queue was never emptied"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, DEADLINE)

    asyncio.run(asyncio.wait_for(test(), 2 * DEADLINE))
    stored = tmp_path / "data" / "s3" / "mail" / "in"
    assert sorted(p.name for p in stored.iterdir()) == sorted(ids)  # whole: no temporary left
    for n, message_id in enumerate(ids):  # the message after the prepended headers, whole
        assert (stored / message_id).read_bytes().endswith(b"\r\n" + body(n))
    assert spool.queued() == []
    assert spool.dead() == []
    # One at a time, each message cost three syncs: its object, the object's folder, queue/.
    # In batches (up to the scheduler's 8 at once), each batch syncs its objects' contents
    # once (or each file, in a batch too small for syncfs), their folder once and queue/ once.
    total = sum(syncs.values())
    assert total <= 2 * MESSAGES, syncs


TWO_ACTIONS = RULES + "      - {type: s3, bucket: mail, prefix: copy/}\n"


def test_messages_whose_actions_all_succeed_write_no_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first action's success is recorded in the spool's step journal (batched with the
    other messages'), not in a state.json rewritten per message (issue 13)."""
    (tmp_path / "rules.yaml").write_text(TWO_ACTIONS)
    spool = Spool(tmp_path / "spool")
    spool.recover()
    book = RuleBook(tmp_path / "rules.yaml", save_text=spool.save_rules, load_text=spool.load_rules)
    ids = spool_messages(spool, book.current.digest, MESSAGES)
    saved: list[str] = []
    real_save = Spool.save_state

    def save_state(self: Spool, message_id: str, state: DispatchState) -> None:
        saved.append(message_id)
        real_save(self, message_id, state)

    monkeypatch.setattr(Spool, "save_state", save_state)
    metrics = DispatchMetrics()
    dispatcher = Dispatcher(
        spool, book, Services.of(LocalTargets(tmp_path / "data")), metrics=metrics
    )
    scheduler = Scheduler(spool, dispatcher.process, metrics=metrics, rescan_every=600.0)

    async def test() -> None:
        scheduler.load_queue()
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        deadline = time.monotonic() + DEADLINE
        while spool.queued():
            assert time.monotonic() < deadline, "the queue was never emptied"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, DEADLINE)

    asyncio.run(asyncio.wait_for(test(), 2 * DEADLINE))
    for prefix in ("in", "copy"):
        stored = tmp_path / "data" / "s3" / "mail" / prefix
        assert sorted(p.name for p in stored.iterdir()) == sorted(ids)
    assert saved == []
    assert spool.queued() == []
