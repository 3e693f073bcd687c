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


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two certificates with their keys (cert.pem/key.pem, other.pem/other-key.pem)."""
    where = tmp_path_factory.mktemp("pems")
    for cert, key in (("cert.pem", "key.pem"), ("other.pem", "other-key.pem")):
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mx"),
                *("-days", "2", "-keyout", str(where / key), "-out", str(where / cert)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    (where / "junk.pem").write_text("not PEM\n")
    return where


TLS_ERRORS = {
    "missing_cert": (["--tls-cert", "{d}/nope.pem", "--tls-key", "{d}/key.pem"],
                     "--tls-cert {d}/nope.pem: no such file"),
    "missing_key": (["--tls-cert", "{d}/cert.pem", "--tls-key", "{d}/nope.pem"],
                    "--tls-key {d}/nope.pem: no such file"),
    "key_of_another_cert": (["--tls-cert", "{d}/cert.pem", "--tls-key", "{d}/other-key.pem"],
                            "--tls-key {d}/other-key.pem: does not match the certificate in "
                            "{d}/cert.pem"),
    "swapped": (["--tls-cert", "{d}/key.pem", "--tls-key", "{d}/cert.pem"],
                "--tls-cert {d}/key.pem: is a private key, not a certificate "
                "(swapped with --tls-key?)"),
    "junk_cert": (["--tls-cert", "{d}/junk.pem", "--tls-key", "{d}/key.pem"],
                  "--tls-cert {d}/junk.pem: no PEM certificate in it"),
    "junk_key": (["--tls-cert", "{d}/cert.pem", "--tls-key", "{d}/junk.pem"],
                 "--tls-key {d}/junk.pem: no PEM private key in it"),
    # Root reads any file: a directory is what cannot be read here.
    "unreadable_cert": (["--tls-cert", "{d}", "--tls-key", "{d}/key.pem"],
                        "--tls-cert {d}: is a directory, not a file"),
    "cert_and_self_signed": (["--tls-cert", "{d}/cert.pem", "--tls-self-signed"],
                             "--tls-self-signed and --tls-cert/--tls-key exclude each other: "
                             "give a certificate and its key, or --tls-self-signed for "
                             "development"),
}  # fmt: skip


@pytest.mark.parametrize(("args", "message"), TLS_ERRORS.values(), ids=TLS_ERRORS)
def test_tls_errors_name_the_file(
    pems: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = serve("--data-dir", str(tmp_path / "data"), *(a.format(d=pems) for a in args))
    refused(result, f"inbound serve: {message.format(d=pems)}\n")
