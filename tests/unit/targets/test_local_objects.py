"""The local S3 target's objects, written durably in batches (inbound.targets.files)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from inbound import datadir
from inbound.core.errors import PermanentActionError, TransientActionError
from inbound.targets import files
from inbound.targets.files import SYNCFS_FROM, FileBatchWriter
from inbound.targets.local import LocalTargets

DEADLINE = 20.0


class Syncs:
    """Counts the syncs a batch makes; each still syncs for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsyncs = 0
        self.syncfs = 0
        self.folders: list[Path] = []
        real_fsync, real_dir = os.fsync, datadir.fsync_dir

        def fsync(fd: int) -> None:
            self.fsyncs += stat.S_ISREG(os.fstat(fd).st_mode)  # files; folders are counted apart
            real_fsync(fd)

        def fsync_dir(path: Path) -> None:
            self.folders.append(path)
            real_dir(path)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr("inbound.targets.files.fsync_dir", fsync_dir)

    def syncfs_of(self, real: object) -> object:
        def syncfs(fd: int) -> None:
            self.syncfs += 1
            if callable(real):
                real(fd)
            else:
                os.sync()  # no syncfs here: the stronger call

        return syncfs


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_batch_is_synced_once_for_its_contents_and_once_per_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = Syncs(monkeypatch)
    writer = FileBatchWriter(syncfs=syncs.syncfs_of(files._SYNCFS))  # type: ignore[arg-type]
    batch = [(tmp_path / "s3" / "mail" / "in" / f"m{i}", b"message %d" % i) for i in range(10)]
    assert writer.write_batch(batch) == [None] * 10
    for path, content in batch:
        assert path.read_bytes() == content
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(tmp_path / "s3" / "mail" / "in") == []
    assert (syncs.syncfs, syncs.fsyncs) == (1, 0)
    # The new folders' parents when they were made, then the batch's one folder once.
    assert syncs.folders[-1] == tmp_path / "s3" / "mail" / "in"
    assert syncs.folders.count(tmp_path / "s3" / "mail" / "in") == 1


def test_a_small_batch_or_no_syncfs_fsyncs_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = Syncs(monkeypatch)
    small = [(tmp_path / f"a{i}", b"a") for i in range(SYNCFS_FROM - 1)]
    assert FileBatchWriter(syncfs=syncs.syncfs_of(None)).write_batch(small) == [None] * len(small)  # type: ignore[arg-type]
    assert (syncs.syncfs, syncs.fsyncs) == (0, SYNCFS_FROM - 1)
    large = [(tmp_path / f"b{i}", b"b") for i in range(8)]
    assert FileBatchWriter(syncfs=None).write_batch(large) == [None] * 8
    assert syncs.fsyncs == SYNCFS_FROM - 1 + 8
    assert syncs.folders == [tmp_path, tmp_path]


def test_a_file_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_bytes(b"a file where a folder should be")
    batch = [
        (tmp_path / "ok" / "one", b"1"),
        (tmp_path / "blocked" / "two", b"2"),
        (tmp_path / "ok" / "three", b"3"),
    ]
    errors = FileBatchWriter().write_batch(batch * 2)
    assert [e is None for e in errors] == [True, False, True] * 2
    assert isinstance(errors[1], OSError)
    assert (tmp_path / "ok" / "one").read_bytes() == b"1"
    assert (tmp_path / "ok" / "three").read_bytes() == b"3"


def test_a_folder_removed_behind_the_writers_back_is_made_again(tmp_path: Path) -> None:
    writer = FileBatchWriter()
    assert writer.write_batch([(tmp_path / "in" / "one", b"1")]) == [None]
    (tmp_path / "in" / "one").unlink()
    (tmp_path / "in").rmdir()
    assert writer.write_batch([(tmp_path / "in" / "two", b"2")]) == [None]
    assert (tmp_path / "in" / "two").read_bytes() == b"2"


def test_concurrent_stores_all_land_whole(tmp_path: Path) -> None:
    targets = LocalTargets(tmp_path)

    async def test() -> None:
        await asyncio.gather(
            *(
                targets.store(
                    "mail", f"in/m{i}", b"x" * 1000 + b"%d" % i, kms_key_arn=None, iam_role_arn=None
                )
                for i in range(40)
            )
        )

    asyncio.run(asyncio.wait_for(test(), DEADLINE))
    folder = tmp_path / "s3" / "mail" / "in"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"m{i}" for i in range(40))
    assert (folder / "m7").read_bytes() == b"x" * 1000 + b"7"


def test_a_store_that_cannot_write_is_a_transient_failure(tmp_path: Path) -> None:
    targets = LocalTargets(tmp_path)
    (tmp_path / "s3").write_bytes(b"a file where the folder should be")
    with pytest.raises(TransientActionError, match="cannot write m1"):
        asyncio.run(targets.store("mail", "in/m1", b"x", kms_key_arn=None, iam_role_arn=None))


@pytest.mark.parametrize("key", ["../../../etc/passwd", "in/../../../x", ".."])
def test_a_key_cannot_leave_the_data_directory(tmp_path: Path, key: str) -> None:
    targets = LocalTargets(tmp_path / "data")
    with pytest.raises(PermanentActionError, match="leaves the data directory"):
        asyncio.run(targets.store("mail", key, b"x", kms_key_arn=None, iam_role_arn=None))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
