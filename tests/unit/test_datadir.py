"""inbound.datadir: what it creates is private whatever the umask; `protect` makes an older
data directory private and leaves alone what inbound did not make."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.core.errors import InputError
from inbound.datadir import append_file, create_file, make_dirs, open_fd, protect


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The widest umask an operator's shell can give; this process's is restored after."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


@pytest.mark.usefixtures("umask_000")
def test_what_it_creates_is_private_under_umask_000(tmp_path: Path) -> None:
    made = make_dirs(tmp_path / "a" / "b")
    assert made == [tmp_path / "a", tmp_path / "a" / "b"]
    with create_file(tmp_path / "a" / "b" / "created") as f:
        f.write(b"x")
    with append_file(tmp_path / "a" / "appended") as f:
        f.write(b"x")
    os.close(open_fd(tmp_path / "a" / "raw", os.O_WRONLY | os.O_CREAT))
    assert {p.name: mode(p) for p in (tmp_path / "a").rglob("*")} == {
        "b": 0o700,
        "created": 0o600,
        "appended": 0o600,
        "raw": 0o600,
    }
    assert mode(tmp_path / "a") == 0o700


@pytest.mark.usefixtures("umask_000")
def test_protect_makes_a_new_data_dir_and_its_parents_private(tmp_path: Path) -> None:
    assert protect(tmp_path / "new" / "data") == 0
    assert mode(tmp_path / "new") == 0o700
    assert mode(tmp_path / "new" / "data") == 0o700


def test_protect_tightens_what_inbound_made_and_nothing_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("spool/queue/ID/message.eml", "s3/b/k", "sns/t.jsonl", "inbound.lock"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x")
    (data / "notes").mkdir()
    (data / "notes" / "todo.txt").write_text("not inbound's")
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's")
    (data / "s3" / "link").symlink_to(outside)
    for path in [data, *data.rglob("*"), outside]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (data / "s3" / "b" / "k").chmod(0o400)  # already closed to others: left as it is

    changed = protect(data)

    assert mode(data) == 0o700
    inbound_made = [p for p in data.rglob("*") if p.parts[len(data.parts)] != "notes"]
    assert {str(p.relative_to(data)): mode(p) for p in inbound_made if not p.is_symlink()} == {
        "spool": 0o700,
        "spool/queue": 0o700,
        "spool/queue/ID": 0o700,
        "spool/queue/ID/message.eml": 0o600,
        "s3": 0o700,
        "s3/b": 0o700,
        "s3/b/k": 0o400,
        "sns": 0o700,
        "sns/t.jsonl": 0o600,
        "inbound.lock": 0o600,
    }
    assert changed == 1 + 9  # the directory itself, then all but s3/b/k
    assert mode(data / "notes") == 0o755  # not inbound's: out of reach now, as it is
    assert mode(data / "notes" / "todo.txt") == 0o644
    assert mode(outside) == 0o644  # the link was not followed


def test_protect_of_a_private_data_dir_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    data.chmod(0o700)
    (data / "spool" / "left").write_bytes(b"x")
    (data / "spool" / "left").chmod(0o644)
    # A private data directory holds nothing others can reach: no walk (it can be large).
    assert protect(data) == 0
    assert mode(data / "spool" / "left") == 0o644


def test_protect_of_a_data_dir_not_ours_is_bad_input(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory")
    with pytest.raises(InputError, match="cannot make the data directory private"):
        protect(file / "data")
