"""Errors a new user meets (issue 14), as the user sees them: stderr and the exit code of the
real `inbound` in a child process. Bad input is exit 2 with one line naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tmpfs import small_tmpfs

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "rules/example.yaml")


def inbound(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inbound", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return inbound("serve", "--rules", EXAMPLE, "--listen", "127.0.0.1:0", *args)


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert (result.returncode, result.stderr) == (2, message), result.stdout + result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_data_dir_that_is_a_file(tmp_path: Path, workers: str) -> None:
    file = tmp_path / "file"
    file.write_text("")
    result = serve("--data-dir", str(file), "--workers", workers)
    refused(result, f"inbound serve: --data-dir {file}: is a file, not a directory\n")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_data_dir_under_a_file(tmp_path: Path, workers: str) -> None:
    file = tmp_path / "file"
    file.write_text("")
    result = serve("--data-dir", str(file / "a" / "data"), "--workers", workers)
    message = f"inbound serve: --data-dir {file}/a/data: {file} is a file, not a directory\n"
    refused(result, message)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_data_dir_on_a_read_only_file_system(tmp_path: Path, workers: str) -> None:
    # The tests run as root, who may write anywhere but on a read-only mount.
    with small_tmpfs(tmp_path / "ro", 1 << 20) as ro:
        subprocess.run(["mount", "-o", "remount,ro,mode=0700", str(ro)], check=True, timeout=30)
        result = serve("--data-dir", str(ro), "--workers", workers)
        refused(result, f"inbound serve: --data-dir {ro}: is on a read-only file system\n")
        result = serve("--data-dir", str(ro / "data"), "--workers", workers)
        message = (
            f"inbound serve: --data-dir {ro}/data: cannot be created: "
            f"{ro} is on a read-only file system\n"
        )
        refused(result, message)


def test_spool_data_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    refused(
        inbound("spool", "list", "--data-dir", str(file)),
        f"inbound spool: --data-dir {file}: is a file, not a directory\n",
    )
    refused(
        inbound("spool", "--data-dir", str(file / "x"), "list"),
        f"inbound spool: --data-dir {file}/x: {file} is a file, not a directory\n",
    )
