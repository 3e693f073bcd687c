"""The webhook on the command line: `inbound webhook sample` prints a request an endpoint
accepts and verifies, `inbound evaluate --json` shows the payload, and test files assert
`expect: {webhooks: [...]}` (SPEC sections 3b and 6)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from tests.integration.test_webhook_delivery import SECRET
from tests.integration.webhook_server import webhook_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = (
    "From: Alice <alice@sender.example>\nTo: support@example.com\n"
    "Subject: =?utf-8?q?caf=C3=A9?=\n\nHello.\n"
)


def inbound(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TEST_WEBHOOK_SECRET", None)
    if secret is not None:
        env["TEST_WEBHOOK_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "inbound", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def files(tmp_path: Path, url: str, fmt: str = "ses") -> tuple[Path, Path]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"""\
version: 1
name: cli
domains: [example.com]
rules:
  - name: archive
    recipients: [archive@example.com]
    actions:
      - {{type: s3, bucket: mail}}
  - name: app
    recipients: [support@example.com]
    actions:
      - {{type: add_header, name: X-Seen, value: "yes"}}
      - {{type: webhook, url: "{url}", format: {fmt}, secret_env: TEST_WEBHOOK_SECRET}}
"""
    )
    eml = tmp_path / "hello.eml"
    eml.write_text(MESSAGE)
    return rules, eml


def test_the_sample_is_a_request_an_endpoint_accepts_and_verifies(tmp_path: Path) -> None:
    with webhook_server() as hook:
        rules, eml = files(tmp_path, hook.url())
        result = inbound("webhook", "sample", str(rules), "--eml", str(eml), "--rule", "app")
        assert result.returncode == 0, result.stderr
        wire = result.stdout.encode()
        with socket.create_connection(("127.0.0.1", hook.port), timeout=10) as sock:
            sock.sendall(wire)
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        (request,) = hook.wait(1)
    assert SECRET not in result.stdout + result.stderr
    notification = Webhook(SECRET).verify(request.body, request.headers)
    assert notification["mail"]["commonHeaders"]["subject"] == "café"
    assert notification["content"].startswith("X-Seen: yes\r\n")  # after add_header
    assert request.headers["webhook-id"].endswith("-1-1")  # rule 1, action 1


def test_the_sample_needs_the_secret_and_a_webhook(tmp_path: Path) -> None:
    rules, eml = files(tmp_path, "https://app.example.com/hooks")
    unset = inbound("webhook", "sample", str(rules), "--eml", str(eml), secret=None)
    assert unset.returncode == 2
    assert "environment variable TEST_WEBHOOK_SECRET is not set" in unset.stderr
    assert "Traceback" not in unset.stderr
    none = inbound(
        "webhook", "sample", str(rules), "--eml", str(eml), "--rcpt", "archive@example.com"
    )
    assert none.returncode == 1
    assert "no webhook action runs for this message" in none.stderr


def test_evaluate_json_shows_the_payload(tmp_path: Path) -> None:
    rules, eml = files(tmp_path, "https://app.example.com/hooks", fmt="raw")
    args = ("evaluate", "--rules", str(rules), "--eml", str(eml))
    result = inbound(*args, "--rcpt", "support@example.com", "--json")
    assert result.returncode == 0, result.stderr
    (shown,) = json.loads(result.stdout)["webhooks"]
    assert shown["url"] == "https://app.example.com/hooks"
    assert shown["step"] == "1:1"
    assert shown["headers"]["Content-Type"] == "message/rfc822"
    assert shown["headers"]["webhook-signature"].startswith("v1,")
    assert shown["body"].endswith("Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nHello.\r\n")
    unsigned = inbound(*args, "--rcpt", "support@example.com", "--json", secret=None)
    (shown,) = json.loads(unsigned.stdout)["webhooks"]
    assert "webhook-signature" not in shown["headers"]
    assert shown["unsigned"] == "environment variable TEST_WEBHOOK_SECRET is not set"
    other = inbound(*args, "--rcpt", "archive@example.com", "--json")
    assert "webhooks" not in json.loads(other.stdout)  # unchanged when no webhook runs


def test_test_files_expect_webhooks(tmp_path: Path) -> None:
    files(tmp_path, "https://app.example.com/hooks")
    cases = tmp_path / "hooks.test.yaml"
    cases.write_text(
        """\
rules: rules.yaml
cases:
  - name: support posts
    eml: hello.eml
    rcpt: [support@example.com]
    expect: {webhooks: ["https://app.example.com/hooks"]}
  - name: archive does not
    eml: hello.eml
    rcpt: [archive@example.com]
    expect: {webhooks: ["https://app.example.com/hooks"]}
"""
    )
    result = inbound("test", str(cases), "--show-webhooks")
    assert result.returncode == 1
    assert "  PASS  support posts" in result.stdout
    assert (
        f"{cases}:10: archive does not: webhooks: expected [https://app.example.com/hooks], "
        "saw []" in result.stdout
    )
    shown = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("    ")]
    assert [s["url"] for s in shown] == ["https://app.example.com/hooks"]


def test_ses_export_refuses_the_webhook_by_name(tmp_path: Path) -> None:
    rules, _ = files(tmp_path, "https://app.example.com/hooks")
    result = inbound("ses", "export", str(rules))
    assert result.returncode == 2
    assert (
        f"{rules}: rule 'app': action 2 (webhook) has no SES equivalent: it runs only in "
        "`inbound serve` or in the inbound Lambda handler" in result.stderr
    )
