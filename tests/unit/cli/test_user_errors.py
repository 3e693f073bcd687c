"""Errors a new user meets (issue 14), as the user sees them: stderr and the exit code of the
real `inbound` in a child process. Bad input is exit 2 with one line naming the problem."""

from __future__ import annotations

import json
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


HELLO = ROOT / "fixtures/messages/hello.eml"
HEAD = b"From: alice@sender.example\r\nTo: support@example.com\r\nSubject: hi\r\n\r\n"
AS_SERVE = {
    # Bytes serve refuses on the wire; evaluate now says the same.
    "bare_lf_in_crlf": (HEAD + b"one\r\ntwo\n.\r\nthree\r\n", [], "550 5.5.2"),
    "bare_cr": (HEAD + b"one\rtwo\r\n", [], "550 5.5.2"),
    "binary_junk": (bytes(range(256)) * 8, [], "550 5.5.2"),
    "line_of_1001_octets": (HEAD + b"x" * 999 + b"\r\n", [], "500 5.5.2"),
    "over_max_message_size": (HEAD + b"y" * 600 + b"\r\n", ["--max-message-size", "512"], "552 5.3.4"),
    "header_over_max_header_size": (HEAD, ["--max-header-size", "32"], "552 5.3.4"),
    # An .eml saved with LF line endings is sent as a mail client sends it: in CRLF.
    "lf_only_file": (HEAD.replace(b"\r\n", b"\n") + b"one\n.two\n", [], "250 2.0.0"),
    "line_of_1000_octets": (HEAD + b"x" * 998 + b"\r\n", [], "250 2.0.0"),
}  # fmt: skip


@pytest.mark.parametrize(("data", "flags", "reply"), AS_SERVE.values(), ids=AS_SERVE)
def test_evaluate_decides_as_serve(
    tmp_path: Path, data: bytes, flags: list[str], reply: str
) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(data)
    args = ["evaluate", "--rules", EXAMPLE, "--rcpt", "support@example.com", *flags]
    result = inbound(*args, "--eml", str(eml))
    assert result.returncode == 0, result.stderr
    assert f"DATA: {reply} " in result.stdout
    if not reply.startswith("250"):
        assert "outcome: rejected" in result.stdout
        assert "support: not evaluated: DATA refused" in result.stdout


def test_evaluate_reads_stdin_and_json_says_why_rules_were_skipped() -> None:
    args = ["evaluate", "--rules", EXAMPLE, "--rcpt", "support@example.com", "--json"]
    result = inbound(*args, "--eml", "-", stdin=(HEAD + b"x\r\ny\nz\r\n").decode())
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["data_reply"]["code"] == 550
    assert out["rules"] == []
    assert out["skipped"][2] == {
        "name": "support",
        "reason": "not evaluated: DATA refused (bare line ending), as inbound serve refuses it",
    }
    result = inbound(*args, "--eml", "-", stdin=HELLO.read_text())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rules"][0]["name"] == "support"


def test_test_command_decides_as_serve(tmp_path: Path) -> None:
    (tmp_path / "junk.eml").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "x.test.yaml").write_text(
        f"rules: {EXAMPLE}\n"
        "cases:\n"
        "  - name: junk is refused as serve refuses it\n"
        "    eml: junk.eml\n"
        "    rcpt: support@example.com\n"
        "    expect: {outcome: rejected, data_reply: 550 5.5.2, rules: []}\n"
    )
    result = inbound("test", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_expected_rule_names_must_exist(tmp_path: Path) -> None:
    """A typo in `not_rules` would pass for ever: it is an error of the test file (exit 2)."""
    (tmp_path / "x.test.yaml").write_text(
        f"rules: {EXAMPLE}\n"
        "cases:\n"
        "  - name: typos\n"
        f"    eml: {HELLO}\n"
        "    rcpt: support@example.com\n"
        "    expect:\n"
        "      rules: [Support]\n"
        "      not_rules: [catchall, nothing-like-it]\n"
    )
    result = inbound("test", str(tmp_path))
    where = f"{tmp_path}/x.test.yaml"
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"{where}:7:15: cases[0].expect.rules[0]: no rule 'Support' in the rule set "
        "(did you mean 'support'?)",
        f"{where}:8:19: cases[0].expect.not_rules[0]: no rule 'catchall' in the rule set "
        "(did you mean 'catch-all'?)",
        f"{where}:8:29: cases[0].expect.not_rules[1]: no rule 'nothing-like-it' in the rule set",
        "3 errors: no test was run",
    ]


def test_a_failing_case_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "x.test.yaml").write_text(
        f"rules: {EXAMPLE}\n"
        "cases:\n"
        "  - name: support is stored\n"
        f"    eml: {HELLO}\n"
        "    rcpt: support@example.com\n"
        "    expect:\n"
        "      outcome: accepted\n"
        "      data_reply: 550\n"
    )
    result = inbound("test", "-q", str(tmp_path / "x.test.yaml"))
    assert result.returncode == 1
    assert f"{tmp_path}/x.test.yaml:8: support is stored: data_reply: expected 550, saw 250 " in (
        result.stdout
    )
