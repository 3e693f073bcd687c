"""A small tmpfs for tests of a full disk: a real filesystem that really runs out of space.

Mounting needs root (CI runs the tests as root); elsewhere the test is skipped, under CI=true
it fails (tests/unavailable.py). The mount is always undone, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.unavailable import unavailable

_TIMEOUT = 30


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted on `path` (made if missing) for the `with` block."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        unavailable("no mount(8) here: a full-disk test needs a tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs (root needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # A process of the test may still hold a file open there: then detach it lazily.
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "--lazy", str(path)], check=True, timeout=_TIMEOUT)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, *, leave: int) -> Path:
    """A file that takes all the free space of `path`'s filesystem but `leave` bytes (rounded
    to its blocks); delete it to free the space again."""
    filler = path / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free_bytes(path) - leave))
    assert free_bytes(path) <= leave + os.statvfs(path).f_frsize, "the filesystem did not fill"
    return filler
