"""The receiver's container image, built from this checkout and run as a user would: mail lands
in the data volume, the server runs as a non-root user, drains and exits 0 on SIGTERM as PID 1,
a new container on the same volume delivers what an old one left queued, and the image's
defaults (command, rules, healthcheck, published port) work on their own."""

from __future__ import annotations

import json
import re
import smtplib
import uuid
from pathlib import Path

import pytest

from tests.container.engine import (
    Container,
    Containers,
    Docker,
    free_port,
    moto_client,
    wait_for,
)
from tests.unavailable import unavailable

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

QUEUED_AS = re.compile(r"queued as ([0-9a-z]{40})")
DATA = "/var/lib/inbound"
UID = "10001"  # the Dockerfile's `inbound` user; the README tells users to chown to it


def rules(bucket: str = "mail") -> str:
    return f"""\
version: 1
name: container-test
domains: [example.com]
rules:
  - name: store
    recipients: [example.com]
    actions:
      - {{type: add_header, name: X-Inbound-Test, value: stored}}
      - {{type: s3, bucket: {bucket}, prefix: in/}}
"""


def mounts(tmp_path: Path, rule_text: str, volume: str) -> tuple[str, ...]:
    """The rules file and an empty DNS zone (no network lookups), read-only; the data volume."""
    (tmp_path / "rules.yaml").write_text(rule_text)
    (tmp_path / "empty.zone").write_text("; no records\n")
    return (
        "-v",
        f"{tmp_path / 'rules.yaml'}:/etc/inbound/rules.yaml:ro",
        "-v",
        f"{tmp_path / 'empty.zone'}:/etc/inbound/empty.zone:ro",
        "-v",
        f"{volume}:{DATA}",
    )


def serve(port: int, *extra: str) -> tuple[str, ...]:
    return (
        "serve",
        "--rules",
        "/etc/inbound/rules.yaml",
        "--data-dir",
        DATA,
        "--listen",
        f"127.0.0.1:{port}",
        "--hostname",
        "mx.test",
        "--dns-zone",
        "/etc/inbound/empty.zone",
        *extra,
    )


def message(subject: str) -> bytes:
    return f"From: alice@sender.example\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def send(port: int, subject: str, rcpt: str = "info@example.com") -> str:
    """One message over SMTP; the ID the receiver queued it as."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        client.rcpt(rcpt)
        code, text = client.data(message(subject))
    assert code == 250, text
    found = QUEUED_AS.search(text.decode())
    assert found, text
    return found.group(1)


def healthy(server: Container) -> bool:
    return server.inspect("{{.State.Health.Status}}") == "healthy"


def test_receives_into_its_volume_as_non_root_and_drains_on_sigterm(
    run: Containers, tmp_path: Path
) -> None:
    port = free_port()
    volume = run.volume()
    server = run.start(
        *serve(port),
        options=(*mounts(tmp_path, rules(), volume), "--network=host", "--health-interval=1s"),
    )
    server.wait_event("server.started")

    # The receiver is PID 1 of the container, and not root.
    status = run.docker("exec", server.name, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(.+)$", status, re.MULTILINE)
    assert uids is not None, status
    assert uids.group(1).split() == [UID] * 4, status
    assert "inbound" in run.docker("exec", server.name, "cat", "/proc/1/cmdline").stdout
    # The healthcheck found the port given with --listen.
    wait_for(lambda: healthy(server), "the container to be healthy")

    first = send(port, "first")
    server.wait_event("message.dispatched", message_id=first)

    # SIGTERM while a transaction is open: it is finished, then the server exits 0.
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        client.rcpt("info@example.com")
        run.docker("kill", "--signal", "TERM", server.name)
        server.wait_event("server.stopping")
        code, text = client.data(message("second"))
    finally:
        client.close()  # no QUIT: the server closes the session after its reply (421 4.3.2)
    assert code == 250, text
    found = QUEUED_AS.search(text.decode())
    assert found, text
    second = found.group(1)
    assert int(run.docker("wait", server.name).stdout) == 0
    assert server.events("server.stopped", drained=True)

    files = server.files()
    stored = files[f"s3/mail/in/{first}"]
    assert b"Subject: first" in stored
    assert b"X-Inbound-Test: stored" in stored
    # Acknowledged during the drain: on the volume, queued for the next start (or delivered).
    kept = files.get(f"spool/queue/{second}/message.eml") or files[f"s3/mail/in/{second}"]
    assert b"Subject: second" in kept


def test_a_new_container_delivers_what_a_stopped_one_left_queued(
    run: Containers, moto: str, tmp_path: Path
) -> None:
    bucket = f"mail-{uuid.uuid4().hex[:8]}"
    s3 = moto_client("s3", moto)
    s3.create_bucket(Bucket=bucket)
    volume = run.volume()
    options = (*mounts(tmp_path, rules(bucket), volume), "--network=host")

    def aws(endpoint: str) -> tuple[str, ...]:
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        return tuple(arg for k, v in env.items() for arg in ("-e", f"{k}={v}"))

    retries = ("--targets", "aws", "--retry-delay", "1s", "--max-retry-delay", "2s")
    # S3 unreachable (nothing listens on that port): the message is accepted and stays queued.
    port = free_port()
    first = run.start(
        *serve(port, *retries), options=(*options, *aws(f"http://127.0.0.1:{free_port()}"))
    )
    first.wait_event("server.started")
    message_id = send(port, "kept")
    first.wait_event("message.deferred", message_id=message_id)
    assert first.stop_with("TERM") == 0
    run.remove(first)

    listing = run.run(
        "spool", "--data-dir", DATA, "list", "--json", options=("-v", f"{volume}:{DATA}")
    )
    assert listing.returncode == 0, listing.stderr
    # Waiting in the spool, not dead: deferred, or queued once its next attempt is due.
    [row] = json.loads(listing.stdout)
    assert row["message_id"] == message_id
    assert row["state"] in ("deferred", "queued"), row

    # A new container on the same volume, S3 reachable: it resumes the message and delivers it.
    port = free_port()
    second = run.start(*serve(port, *retries), options=(*options, *aws(moto)))
    assert second.wait_event("server.started")["queued"] == 1
    second.wait_event("message.dispatched", message_id=message_id)
    body = s3.get_object(Bucket=bucket, Key=f"in/{message_id}")["Body"].read()
    assert b"Subject: kept" in body
    assert second.stop_with("TERM") == 0
    assert not [p for p in second.files() if p.startswith("spool/queue/")]


def test_the_default_command_serves_the_example_rules_on_a_published_port(
    run: Containers, docker: Docker
) -> None:
    if docker("network", "inspect", "bridge", check=False).returncode != 0:
        unavailable("the engine runs without a bridge network (--bridge=none): no -p mapping")
    port = free_port()
    server = run.start(options=("-p", f"127.0.0.1:{port}:2525", "--health-interval=1s"))
    assert server.wait_event("server.started")["listen"] == "0.0.0.0:2525"
    wait_for(lambda: healthy(server), "the container to be healthy")

    message_id = send(port, "hello", rcpt="support@example.com")
    server.wait_event("message.dispatched", message_id=message_id)
    assert f"s3/mail/support/{message_id}" in server.files()
    assert server.stop_with("TERM") == 0


def test_other_commands_run_through_the_entrypoint(run: Containers, tmp_path: Path) -> None:
    shipped = run.run("check", "/etc/inbound/rules.yaml")
    assert shipped.returncode == 0, shipped.stderr
    assert "ok: rule set 'example'" in shipped.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: 1\nname: broken\ndomains: [example.com]\nrules:\n  - name: r\n    actions: [{type: s4}]\n"
    )
    checked = run.run(
        "check", "/rules/broken.yaml", options=("-v", f"{broken}:/rules/broken.yaml:ro")
    )
    assert checked.returncode == 2
    assert checked.stderr.startswith("/rules/broken.yaml:6:"), checked.stderr  # FILE:LINE:COL
