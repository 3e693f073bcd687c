"""compose.yaml's `cluster` profile, as far as this machine can run it (no image registry, so
neither MinIO nor ElasticMQ): the profile leaves `docker compose up` as it was, the receivers'
and consumers' commands are ones inbound accepts, their addresses name the file's services,
the rules suit a receiver with --spool s3://, and docker-compose accepts the profile. Then
the profile's jobs, two receivers and two consumers run from the image with their own
commands and environment, moto server standing in for MinIO and ElasticMQ: mail sent to both
receivers gets 250, the consumers' S3 action stores it, and the queue ends empty."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from inbound.actions.s3 import S3Action
from inbound.cli.main import build_parser
from inbound.cli.serve import settings_from
from inbound.cli.ses import MAX_CONCURRENCY, run_consume
from inbound.rules.load import load_rule_set
from inbound.ses.rulesets import connection_issues
from tests.conftest import ROOT
from tests.container.engine import (
    Container,
    Containers,
    Docker,
    free_port,
    moto_client,
    wait_for,
)
from tests.container.test_compose import COMPOSE, GTUBE, send, services
from tests.integration.daemons import Daemons, start_daemons
from tests.unavailable import unavailable

CLUSTER = {"receiver-1", "receiver-2", "consumer-1", "consumer-2", "make-queue", "elasticmq"}
SINGLE = {"inbound", "make-bucket", "minio", "clamd", "spamd"}  # `docker compose up`, as before
RECEIVERS = ("receiver-1", "receiver-2")
CONSUMERS = ("consumer-1", "consumer-2")
ELASTICMQ_CONF = "/opt/elasticmq.conf"  # where softwaremill/elasticmq-native reads its config
ELASTICMQ_ACCOUNT = "000000000000"  # ElasticMQ's default aws.accountId, in its queue URLs
MINIO_PORT = 9000  # `minio server /data` serves S3 there
DEADLINE = 90.0  # seconds, for the consumers on two shared cores


def endpoints(service: dict[str, Any], found: dict[str, Any]) -> tuple[str, str]:
    """The service's S3 and SQS endpoints, checked to name the file's MinIO and ElasticMQ."""
    env = service["environment"]
    s3, sqs = urlsplit(env["AWS_ENDPOINT_URL_S3"]), urlsplit(env["AWS_ENDPOINT_URL_SQS"])
    assert (s3.hostname, s3.port) == ("minio", MINIO_PORT)
    assert s3.hostname in found
    conf = elasticmq_conf(found)
    assert sqs.hostname == "elasticmq"
    assert sqs.hostname in found
    assert f"bind-port = {sqs.port}" in conf
    return str(env["AWS_ENDPOINT_URL_S3"]), str(env["AWS_ENDPOINT_URL_SQS"])


def elasticmq_conf(found: dict[str, Any]) -> str:
    mounts = dict(reversed(v.split(":")[:2]) for v in found["elasticmq"]["volumes"])
    return (ROOT / str(mounts[ELASTICMQ_CONF])).read_text()


def test_the_cluster_profile_leaves_docker_compose_up_as_it_was() -> None:
    found = services()
    assert {name for name, s in found.items() if "profiles" in s} == CLUSTER
    assert all(found[name]["profiles"] == ["cluster"] for name in CLUSTER)
    # Compose starts every service without a profile: only the single receiver's pipeline,
    # none of which needs a cluster service.
    assert set(found) - CLUSTER == SINGLE
    for name in SINGLE:
        assert not set(found[name].get("depends_on", ())) & CLUSTER, name


def test_the_receivers_commands_store_in_s3_and_notify_the_consumers_queue() -> None:
    found = services()
    queue = found["make-queue"]["environment"]["INBOUND_QUEUE_URL"]
    bucket = found["make-bucket"]["environment"]["INBOUND_BUCKET"]
    published = set()
    for name in RECEIVERS:
        receiver = found[name]
        args = build_parser().parse_args(receiver["command"])  # exits 2 on a flag serve lacks
        settings = settings_from(args)
        # The bucket make-bucket creates, the queue make-queue creates (and ElasticMQ serves).
        assert settings.s3_spool is not None
        assert (settings.s3_spool.bucket, settings.s3_spool.queue_url) == (bucket, queue)
        _, sqs = endpoints(receiver, found)
        assert queue.startswith(f"{sqs}/{ELASTICMQ_ACCOUNT}/")
        # Each on a host port of its own; the metrics on loopback only.
        (smtp,) = [p for p in receiver["ports"] if p.endswith(f":{settings.port}")]
        published.add(smtp.rpartition(":")[0])
        assert settings.metrics is not None
        (metrics,) = [p for p in receiver["ports"] if p.endswith(f":{settings.metrics[1]}")]
        assert metrics.startswith("127.0.0.1:")
        # Rules that load, that a consumer can evaluate (no client_ip or tls conditions: a
        # receiver with --spool s3:// refuses them), storing in the same bucket.
        mounts = dict(reversed(v.split(":")[:2]) for v in receiver["volumes"])
        loaded = load_rule_set(ROOT / mounts[str(args.rules)])
        assert connection_issues(loaded) == []
        buckets = {
            a.bucket for r in loaded.rule_set.rules for a in r.actions if isinstance(a, S3Action)
        }
        assert buckets == {bucket}
        # The verdicts are measured here, by the file's scanners.
        assert settings.clamd == "clamd:3310"
        assert settings.spamd == "spamd:783"
        assert {"clamd", "spamd"} <= set(receiver["depends_on"])
        assert receiver["depends_on"]["make-queue"]["condition"] == (
            "service_completed_successfully"
        )
        assert receiver["stop_grace_period"] == "40s"  # --drain-timeout is 30 s
    assert published == {"25", "2526"}


def test_the_consumers_commands_read_that_queue_with_the_receivers_rules() -> None:
    found = services()
    queue = found["make-queue"]["environment"]["INBOUND_QUEUE_URL"]
    for name in CONSUMERS:
        consumer = found[name]
        args = build_parser().parse_args(consumer["command"])
        assert args.run is run_consume
        assert args.queue == queue
        # The rule set each notification names (its digest), never one of their own.
        assert args.named_rules_only
        assert args.rules is None
        assert "INBOUND_RULES" not in consumer["environment"]
        assert 1 <= args.concurrency <= MAX_CONCURRENCY
        endpoints(consumer, found)
        assert consumer["depends_on"]["make-queue"]["condition"] == (
            "service_completed_successfully"
        )
        # SIGTERM is answered once the long poll (--wait, 20 s) returns.
        assert consumer["stop_grace_period"] == "40s"
        assert args.wait < 40
    job = found["make-queue"]
    endpoints(job, found)
    assert job["depends_on"]["make-bucket"]["condition"] == "service_completed_successfully"
    assert "elasticmq" in job["depends_on"]
    # Every queued notification survives a restart of ElasticMQ (or `down` and `up`): in a
    # database on a named volume.
    assert re.search(r"messages-storage \{[^}]*enabled = true", elasticmq_conf(found))
    assert 'uri = "jdbc:h2:/data/' in elasticmq_conf(found)
    mounts = dict(reversed(v.split(":")[:2]) for v in found["elasticmq"]["volumes"])
    assert mounts["/data"] in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_docker_compose_accepts_the_cluster_profile() -> None:
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose missing: .ci/container-build.sh ensure installs it")
    checked = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "--profile", "cluster", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


# -- a run, with moto server for MinIO and ElasticMQ -----------------------------------------


@pytest.fixture(scope="module")
def scanners() -> Iterator[Daemons]:
    """The real clamd and spamd, for the receivers' --clamd and --spamd."""
    yield from start_daemons()


def as_run(
    service: dict[str, Any], env: dict[str, str], flags: dict[str, str]
) -> tuple[tuple[str, ...], list[str]]:
    """`docker run` options and arguments for a compose service on the host's network: its
    environment with `env` over it, its command with the value after each of `flags` replaced
    (the addresses compose's network gives by service name)."""
    options = ["--network=host"]
    for key, value in {**service["environment"], **env}.items():
        options += ["-e", f"{key}={value}"]
    command = list(service["command"])
    for flag, value in flags.items():
        assert flag in command, f"{flag} not in {command}"
        command[command.index(flag) + 1] = value
    if "entrypoint" in service:
        options += ["--entrypoint", service["entrypoint"][0]]
        command = [*service["entrypoint"][1:], *command]
    return tuple(options), command


def stop_all(docker: Docker, containers: list[Container]) -> list[int]:
    """SIGTERM to every container at once (the consumers may each be in a 20 s long poll),
    then their exit codes."""
    for container in containers:
        docker("kill", "--signal", "TERM", container.name)
    return [int(docker("wait", c.name, timeout=60).stdout.strip()) for c in containers]


@pytest.mark.container
@pytest.mark.timeout(600)
def test_the_cluster_runs_mail_from_both_receivers_through_the_consumers(
    run: Containers, docker: Docker, moto: str, scanners: Daemons, tmp_path: Path
) -> None:
    found = services()
    unique = uuid.uuid4().hex[:8]
    bucket, queue_name = f"cluster-{unique}", f"inbound-{unique}"
    aws = {"AWS_ENDPOINT_URL_S3": moto, "AWS_ENDPOINT_URL_SQS": moto, "INBOUND_BUCKET": bucket}
    s3 = moto_client("s3", moto)
    sqs = moto_client("sqs", moto)

    # The jobs, in compose's order: the bucket, then the queues (twice: `up` runs it again).
    options, command = as_run(found["make-bucket"], aws, {})
    done = run.run(*command, options=options)
    assert done.returncode == 0, done.stderr
    job_env = {**aws, "INBOUND_QUEUE_URL": f"{moto}/123456789012/{queue_name}"}
    options, command = as_run(found["make-queue"], job_env, {})
    for attempt in ("creates", "finds"):
        done = run.run(*command, options=options)
        assert done.returncode == 0, f"{attempt}: {done.stderr}"
        assert f"queue {queue_name} is ready" in done.stdout
    queue = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    dead = sqs.get_queue_url(QueueName=f"{queue_name}-dead-letters")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])
    policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(f":{queue_name}-dead-letters")
    assert int(policy["maxReceiveCount"]) == 10

    # The receivers with the profile's rules, but this test's bucket.
    compose_bucket = found["make-bucket"]["environment"]["INBOUND_BUCKET"]
    rules = yaml.safe_load((ROOT / "container" / "rules.yaml").read_text())
    for rule in rules["rules"]:
        for action in rule["actions"]:
            if action.get("bucket") == compose_bucket:
                action["bucket"] = bucket
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "rules.yaml").chmod(0o644)
    ports = [free_port(), free_port()]
    receivers = []
    for name, port in zip(RECEIVERS, ports, strict=True):
        spool = settings_from(build_parser().parse_args(found[name]["command"])).s3_spool
        assert spool is not None
        options, command = as_run(
            found[name],
            aws,
            {
                "--listen": f"127.0.0.1:{port}",
                "--metrics": f"127.0.0.1:{free_port()}",
                "--clamd": scanners.clamd,
                "--spamd": scanners.spamd,
                "--spool": f"s3://{bucket}/{spool.prefix}",
                "--queue": queue,
            },
        )
        mount = ("-v", f"{tmp_path / 'rules.yaml'}:/etc/inbound/rules.yaml:ro")
        receivers.append(run.start(*command, options=(*options, *mount)))
    consumers = []
    for name in CONSUMERS:
        options, command = as_run(found[name], aws, {"--queue": queue})
        consumers.append(run.start(*command, options=options))
    for receiver in receivers:
        receiver.wait_event("server.started")

    ham = [send(ports[0], "Hello, where is my order?"), send(ports[1], "And mine?")]
    spam = send(ports[1], GTUBE)

    # Stored by the receivers, then by the consumers' S3 action, by the verdict measured at
    # receipt (the rules' spam/ or inbox/).
    wanted = {f"inbox/{ham[0]}", f"inbox/{ham[1]}", f"spam/{spam}"}

    def all_stored() -> set[str] | None:
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        keys = {o["Key"] for o in listed}
        return keys if keys >= wanted else None

    try:
        wait_for(all_stored, "the consumers' S3 actions", DEADLINE)
    except AssertionError as exc:  # say which container gave up (a command refused: exit 2)
        states = {c.name: c.inspect("{{.State.Status}} {{.State.ExitCode}}") for c in consumers}
        raise AssertionError(f"{exc}; consumers: {states}") from None

    def waiting(url: str) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return sum(int(counts[n]) for n in names)

    # Each notification is deleted once its message is done: the queue ends empty, none
    # dead-lettered, and every message done by one of the consumers, none failed.
    wait_for(lambda: waiting(queue) == 0, "an empty queue", DEADLINE)
    assert waiting(dead) == 0
    for consumer in consumers:
        consumer.wait_event("sqs.consuming", queue=queue)
        assert consumer.events("sqs.failed") == []
    handled = {e["message_id"] for c in consumers for e in c.events("sqs.succeeded")}
    assert handled == {*ham, spam}

    # The messages as received, and the consumers' step state, in the same S3 endpoint: boto3
    # took AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL_SQS for every client (no AWS_ENDPOINT_URL).
    stored = all_stored()
    assert stored is not None
    assert {f"spool/{i}" for i in (*ham, spam)} <= stored
    assert {f"inbound-state/{i}.json" for i in (*ham, spam)} <= stored
    assert "AWS_ENDPOINT_URL" not in found["consumer-1"]["environment"]
    assert not {k for k in stored if k.startswith(("inbox/", "spam/"))} - wanted

    assert stop_all(docker, receivers + consumers) == [0, 0, 0, 0]
