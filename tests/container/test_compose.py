"""compose.yaml, as far as it can be checked without the registry images (MinIO, ClamAV): the
receiver's command is one `inbound serve` accepts and its addresses name the sidecars,
docker-compose accepts the file, the bucket job creates the bucket (against moto), and the
spamd sidecar built from container/spamd.Dockerfile gives the receiver its spam verdicts."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from inbound.cli.main import build_parser
from inbound.cli.serve import settings_from
from inbound.rules.load import load_rule_set
from tests.conftest import ROOT
from tests.container.engine import (
    BUILT,
    LOCAL_DEBIAN,
    Container,
    Containers,
    Docker,
    build,
    free_port,
    moto_client,
    wait_for,
)
from tests.unavailable import unavailable

COMPOSE = ROOT / "compose.yaml"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolated(value: Any) -> Any:
    """The file as compose reads it with none of its variables set: `${X:-default}` → default."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolated(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolated(v) for k, v in value.items()}
    return value


def services() -> dict[str, Any]:
    loaded = interpolated(yaml.safe_load(COMPOSE.read_text()))
    assert isinstance(loaded, dict)
    found = loaded["services"]
    assert isinstance(found, dict)
    return found


def test_the_receivers_command_is_one_inbound_serve_accepts() -> None:
    found = services()
    receiver = found["inbound"]
    args = build_parser().parse_args(receiver["command"])  # exits 2 on a flag serve lacks
    settings = settings_from(args)

    # Published where it listens, storing on the volume, with rules that load.
    assert f"25:{settings.port}" in receiver["ports"]
    mounts = dict(reversed(v.split(":")[:2]) for v in receiver["volumes"])
    assert mounts[str(settings.data_dir)] == "inbound-data"
    load_rule_set(ROOT / mounts[str(args.rules)])

    # Every address it is given names a service of the file, at the port that one serves.
    assert settings.clamd == "clamd:3310"
    assert settings.spamd is not None
    assert settings.spamd.partition(":")[0] in found
    assert "EXPOSE 783" in (ROOT / "container" / "spamd.Dockerfile").read_text()
    endpoint = urlsplit(receiver["environment"]["AWS_ENDPOINT_URL_S3"])
    assert endpoint.hostname in found
    assert endpoint.port == 9000
    # docker stop waits long enough for --drain-timeout (30 s).
    assert receiver["stop_grace_period"] == "40s"


def test_docker_compose_accepts_the_file() -> None:
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose missing: .ci/container-build.sh ensure installs it")
    checked = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.container
@pytest.mark.timeout(600)
def test_the_bucket_job_creates_the_bucket_and_finds_it_again(run: Containers, moto: str) -> None:
    job = services()["make-bucket"]
    bucket = f"compose-{uuid.uuid4().hex[:8]}"
    env = {**job["environment"], "AWS_ENDPOINT_URL_S3": moto, "INBOUND_BUCKET": bucket}
    options = ["--network=host", "--entrypoint", job["entrypoint"][0]]
    for key, value in env.items():
        options += ["-e", f"{key}={value}"]
    for attempt in ("creates", "finds"):
        done = run.run(*job["entrypoint"][1:], *job["command"], options=tuple(options))
        assert done.returncode == 0, f"{attempt}: {done.stderr}"
        assert f"bucket {bucket} is ready" in done.stdout
    s3 = moto_client("s3", moto)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def send(port: int, body: str) -> str:
    message = f"From: alice@sender.example\r\nSubject: test\r\n\r\n{body}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        client.rcpt("info@example.com")
        code, text = client.data(message)
    assert code == 250, text
    return text.decode().rpartition(" ")[2]


def healthy(server: Container) -> bool:
    return server.inspect("{{.State.Health.Status}}") == "healthy"


@pytest.mark.container
@pytest.mark.timeout(600)
def test_the_spamd_sidecar_gives_the_receiver_its_spam_verdicts(
    run: Containers, docker: Docker, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """As compose runs them: a network of their own, spamd by its service name, its own
    command; the receiver with compose's rules (local targets: MinIO cannot run here)."""
    if docker("network", "inspect", "bridge", check=False).returncode != 0:
        unavailable("the engine runs without a bridge network (--bridge=none)")
    sidecar = services()["spamd"]["build"]
    spamd_image = build(
        docker,
        tmp_path,
        tag="inbound-spamd:test",
        local_base=LOCAL_DEBIAN,
        base_env="INBOUND_TEST_DOCKER_DEBIAN_BASE",
        context=ROOT / sidecar["context"],
        dockerfile=sidecar["dockerfile"],
    )
    pytestconfig.stash.setdefault(BUILT, []).append(spamd_image)
    network = run.network()
    spamd = run.start(
        options=("--network", network, "--network-alias", "spamd"), image=spamd_image.id
    )
    port = free_port()
    server = run.start(
        *("serve", "--rules", "/etc/inbound/rules.yaml", "--data-dir", "/var/lib/inbound"),
        *("--listen", "0.0.0.0:2525", "--hostname", "mx.test", "--spamd", "spamd:783"),
        options=(
            *("--network", network, "-p", f"127.0.0.1:{port}:2525", "--health-interval=1s"),
            *("-v", f"{ROOT / 'container' / 'rules.yaml'}:/etc/inbound/rules.yaml:ro"),
        ),
    )
    wait_for(lambda: healthy(server), "the receiver to be healthy")
    wait_for(
        lambda: "server started on" in run.docker("logs", spamd.name).stderr,
        "spamd to listen",
    )

    spam = send(port, GTUBE)
    ham = send(port, "Hello, where is my order?")
    assert server.wait_event("message.received", message_id=spam)["verdicts"]["spam"] == "FAIL"
    server.wait_event("message.dispatched", message_id=spam)
    server.wait_event("message.dispatched", message_id=ham)
    stored = server.files()
    assert b"X-SES-Spam-Verdict: FAIL" in stored[f"s3/mail/spam/{spam}"]
    assert f"s3/mail/inbox/{ham}" in stored
    assert server.stop_with("TERM") == 0
    assert spamd.stop_with("TERM") == 0
