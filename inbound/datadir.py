"""The data directory is private (SPEC section 7, Files): it is 0700, every directory in it 0700
and every file 0600, whatever the umask the receiver was started with.

Everything inbound writes there is created with these modes (`create_file`, `make_dir`), so it
holds by construction; `restrict_umask` covers what libraries create there (prometheus-client's
files under DATA_DIR/run); `protect` makes private a data directory that an older version, an
operator's `mkdir` or a container volume left open to others. This module runs no actions.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from inbound.core.errors import InputError
from inbound.observe.log import emit

log = logging.getLogger("inbound.datadir")

DIR_MODE = 0o700
FILE_MODE = 0o600
# Group and others get nothing, whatever a library asks for when it creates a file.
UMASK = 0o077
_OPEN_TO_OTHERS = 0o077


def restrict_umask() -> None:
    """For a process that writes into the data directory (`inbound serve`, `inbound spool`):
    its children, the --workers processes among them, inherit it."""
    os.umask(UMASK)


def open_fd(path: str | os.PathLike[str], flags: int) -> int:
    """`os.open(path, flags)`; with O_CREAT, a new file is 0600 (open(2) masks the mode with
    the umask, so it is never wider)."""
    return os.open(path, flags, FILE_MODE)


def create_file(path: Path, *, buffering: int = -1) -> BinaryIO:
    """`open(path, "wb")`, created 0600 if it is new."""
    return open(path, "wb", buffering=buffering, opener=open_fd)


def append_file(path: Path) -> BinaryIO:
    """`open(path, "ab")`, created 0600 if it is new."""
    return open(path, "ab", opener=open_fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (new files, renames) durable: fsync the directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path, *, exist_ok: bool = False) -> None:
    """`mkdir`, 0700. (Path.mkdir(parents=True) would make the parents with the umask's mode.)"""
    path.mkdir(mode=DIR_MODE, exist_ok=exist_ok)


def make_dirs(path: Path) -> list[Path]:
    """`mkdir -p`, every directory it makes 0700; those that were missing, outermost first
    (one made meanwhile by another thread is among them: its parent may not be synced yet)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    missing.reverse()
    for directory in missing:
        make_dir(directory, exist_ok=True)
    return missing


def protect(data_dir: Path) -> int:
    """Make `data_dir` (0700), or make an existing one 0700 and, if it was open to others,
    what inbound keeps in it private too; return how many entries were changed.

    The walk runs only then: a data directory inbound made is 0700 from the start and all it
    holds was created private, so the cost (the local S3 target keeps every message) is paid
    once, by the first start on a directory from an older version, not by every start. It
    visits only what inbound makes there: a --data-dir given by mistake (a home directory)
    keeps the modes of everything else in it.
    """
    try:
        made = make_dirs(data_dir)
        mode = stat.S_IMODE(data_dir.stat().st_mode)
        if mode == DIR_MODE:
            return 0
        changed = 1
        if mode & _OPEN_TO_OTHERS and not made:
            # Below first, the directory last: a start cut short walks again next time.
            changed += sum(_tighten(data_dir / name) for name in _ENTRIES)
        data_dir.chmod(DIR_MODE)
    except OSError as exc:
        raise InputError(
            f"{exc.filename or data_dir}: cannot make the data directory private "
            f"(--data-dir must belong to the user inbound runs as): {exc.strerror}"
        ) from None
    if not made:
        emit(
            log,
            "data_dir.protected",
            level=logging.WARNING,
            data_dir=str(data_dir),
            mode_was=f"{mode:04o}",
            changed=changed,
        )
    return changed


# What inbound has ever made at the top of the data directory (README, Disk layout).
_ENTRIES = ("inbound.lock", "spool", "s3", "sns", "lambda", "bounce", "tls", "run")


def _tighten(top: Path) -> int:
    """Make `top` and, if it is a directory, everything below it private; how many changed."""
    return sum(_tighten_one(path) for path in _below(top))


def _below(top: Path) -> Iterator[str]:
    yield str(top)
    if top.is_dir() and not top.is_symlink():
        for parent, dirs, files in os.walk(top, onerror=_raise):
            for name in (*dirs, *files):
                yield os.path.join(parent, name)


def _tighten_one(path: str) -> int:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return 0  # never made (or a spool message finished meanwhile)
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & _OPEN_TO_OTHERS:
        return 0  # a link's own mode means nothing; os.walk does not follow it
    os.chmod(path, DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE)
    return 1


def _raise(error: OSError) -> None:
    raise error
