"""`inbound ses import|plan|consume` when AWS cannot be reached as configured: a message that
says what to fix, exit 2, never a traceback (the commands run in a child process, as typed)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

RULES = """\
version: 1
name: main
domains: [example.com]
rules:
  - name: support
    recipients: [support@example.com]
    actions: [{type: s3, bucket: mail, prefix: support/}]
"""


def inbound(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`inbound ARGS` with only the AWS configuration given here (none of the developer's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    aws = {
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_MAX_ATTEMPTS": "1",
    }
    (tmp_path / "rules.yaml").write_text(RULES)
    return subprocess.run(
        [sys.executable, "-m", "inbound", *(a.format(tmp=tmp_path) for a in args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **aws, **env, "PYTHONPATH": str(ROOT)},
        check=False,
    )


QUEUE = "http://127.0.0.1:9/1/q"  # the discard port: nothing listens
COMMANDS = {
    "import": ["ses", "import", "--active"],
    "plan": ["ses", "plan", "{tmp}/rules.yaml"],
    "consume": ["ses", "consume", "--queue", QUEUE, "--rules", "{tmp}/rules.yaml"],
}


NO_REGION = "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)"


@pytest.mark.parametrize("args", COMMANDS.values(), ids=COMMANDS)
def test_no_region_anywhere_says_which_variable(tmp_path: Path, args: list[str]) -> None:
    result = inbound(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr == f"inbound ses: {NO_REGION}\n"


def test_serve_with_aws_targets_and_no_region_refuses_to_start(tmp_path: Path) -> None:
    """Not a receiver whose SNS and Lambda actions all dead-letter with NoRegionError later."""
    args = ["serve", "--rules", "{tmp}/rules.yaml", "--data-dir", "{tmp}/data"]
    result = inbound(tmp_path, *args, "--targets", "aws", "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"inbound serve: {NO_REGION}"
    assert "Traceback" not in result.stderr


class HtmlError(BaseHTTPRequestHandler):
    """What a proxy or a half-implemented emulator answers: a 500 page in HTML."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"<!doctype html><title>500 Internal Server Error</title>"
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def html_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HtmlError)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_answer_that_is_not_from_ses_names_the_call(tmp_path: Path, html_endpoint: str) -> None:
    at_html = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": html_endpoint}
    result = inbound(tmp_path, *COMMANDS["import"], **at_html)
    assert result.returncode == 2
    assert result.stderr.startswith("inbound ses: describe_active_receipt_rule_set: ")
    assert "500 Internal Server Error" in result.stderr
    assert "Traceback" not in result.stderr


def test_consume_of_an_unreachable_queue_is_an_error(tmp_path: Path) -> None:
    nowhere = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    result = inbound(tmp_path, *COMMANDS["consume"], "--wait", "0", **nowhere)
    assert result.returncode == 2
    assert f"inbound ses: receive_message {QUEUE}: Could not connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_aws_region_alone_is_the_region(tmp_path: Path, html_endpoint: str) -> None:
    """SPEC section 3 names AWS_REGION (what the Lambda runtime and other SDKs read); boto3
    alone reads only AWS_DEFAULT_REGION. The call is made: here it meets a non-SES answer."""
    result = inbound(
        tmp_path, *COMMANDS["plan"], AWS_REGION="eu-west-1", AWS_ENDPOINT_URL=html_endpoint
    )
    assert result.returncode == 2
    assert "no AWS region" not in result.stderr
    assert "Traceback" not in result.stderr
