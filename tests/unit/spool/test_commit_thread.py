"""The group commit thread survives an exception that is not an OSError: the messages of the
failed batch are refused (451, the client sends again) and later commits still complete."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from inbound.core.ids import MessageIdGenerator
from inbound.spool.commit import GroupCommitter
from inbound.spool.store import Spool, SpoolWriteError, SpoolWriter
from tests.unit.spool.test_store import body_of, make_meta

IDS = MessageIdGenerator()


def test_the_commit_thread_survives_its_exceptions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="inbound")
    spool = Spool(tmp_path)

    async def commit(committer: GroupCommitter) -> str:
        writer = spool.open_writer(IDS.next())
        writer.write(body_of(writer.message_id))
        await committer.commit(writer, make_meta(writer.message_id, writer.size))
        return writer.message_id

    def publish_with_a_bug(writers: Sequence[SpoolWriter]) -> list[SpoolWriteError | None]:
        raise ValueError("not an OSError, as a bug would raise")

    async def main() -> tuple[BaseException | str, str]:
        committer = GroupCommitter(spool)
        committer.start()
        # The spool's publish raises what it does not expect (it handles OSError).
        with monkeypatch.context() as patch:
            patch.setattr(spool, "publish", publish_with_a_bug)
            try:
                failed: BaseException | str = await asyncio.wait_for(commit(committer), 10)
            except SpoolWriteError as exc:
                failed = exc
        later = await asyncio.wait_for(commit(committer), 10)
        await committer.close()
        return failed, later

    failed, later = asyncio.run(main())
    assert isinstance(failed, SpoolWriteError), "that caller answers 451"
    assert spool.queued() == [later], "the next commit is queued"
    logged = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "task.failed"]
    assert [(f["task"], f["error_type"]) for f in logged] == [("spool.commit", "ValueError")]
