"""Messages per second and CPU per message of a cluster (SPEC 7b) against moto server, with 1, 2
and 3 receivers (`inbound serve --spool s3:// --queue`) and 1, 2 and 3 consumers (`inbound ses
consume --named-rules-only --concurrency K`), and where the bottleneck is.

Per count N: a fresh moto server of this run's own (one Python process standing in for S3, SQS
and SNS: its CPU is measured, so a shared one would not do), a spool bucket, a queue, and a rule
set with an S3 action (a versioned bucket) and an SNS action (a topic with a queue subscribed).
Then two phases, measured apart so each role's rate is its own:

- receive: N receivers, the smtp-source load split across them (one smtp-source per receiver,
  SESSIONS/N sessions each, a new connection per message); SPF, DKIM and DMARC answered from a
  `--dns-zone` file (no DNS traffic). Wall time from the first connection to the last
  smtp-source's exit; CPU until the receivers and moto are idle again.
- consume: N consumers started on the full queue; measured from the moment all N are consuming
  (their `sqs.consuming` line) until every message's `sqs.succeeded` line, over the messages
  done in that window.

Per phase: msg/s, the role's CPU ms per message (all its processes), the busiest of its
processes (fraction of one core), moto's CPU ms per message, moto's busy fraction of one core
and its share of the phase's CPU, and the machine's busy cores (what other processes took). The
bottleneck line says which of these limited the rate. Checks: every message got a 250, is in
the spool once with its notification, and after the consumers every one is stored once (one
object version) and published once, and the queue is empty (bench/cluster_checks.py; what
moto's SQS did on its own, a notification delivered to two consumers at once or a delete it
lost, is a note under the table, not a failure). Exit status 1 when a check failed.

Run it as `bash bench/cluster.sh` (which installs what is missing); all traffic on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from cluster_checks import check_actions, check_spool
from cluster_lab import TICKS, Child, Lab, Resources, create_resources, machine_ticks, settle
from cluster_lab import tree_ticks as ticks_of
from cluster_report import Phase, Row, report

DOMAIN = "example.com"
SENDER = "bench@sender.example"
# SPF passes for 127.0.0.1 (RFC 7208 ip4); DMARC passes through the aligned SPF identity
# (smtp-source's From: is the envelope sender). Every other name is NXDOMAIN: no DNS traffic.
ZONE = """\
sender.example         TXT  "v=spf1 ip4:127.0.0.1 -all"
_dmarc.sender.example  TXT  "v=DMARC1; p=reject"
"""


def rules(res: Resources) -> str:
    return f"""\
version: 1
name: bench-cluster
domains: [{DOMAIN}]
rules:
  - name: keep
    recipients: [{DOMAIN}]
    actions:
      - {{type: s3, bucket: {res.out}, prefix: kept/}}
      - {{type: sns, topic_arn: "{res.topic}"}}
"""


@dataclass
class Options:
    messages: int
    sessions: int
    size: int
    counts: list[int]
    concurrency: int
    workers: int
    python: str = sys.executable


def note(text: str) -> None:
    print(f"cluster: {text}", file=sys.stderr, flush=True)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def wait_event(children: list[Child], event: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not all(c.count(event)[event] for c in children):
        for c in children:
            if c.process.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"{c.name} never logged {event}: {c.log.read_text()[-2000:]}")
        time.sleep(0.05)


def start_receivers(lab: Lab, res: Resources, opts: Options, n: int) -> list[Child]:
    work = lab.work
    (work / "rules.yaml").write_text(rules(res))
    (work / "bench.zone").write_text(ZONE)
    receivers = []
    for i in range(n):
        name = f"receiver-{n}-{i}"
        argv = [opts.python, "-m", "inbound", "serve", "--rules", str(work / "rules.yaml")]
        argv += ["--data-dir", str(work / name), "--listen", "127.0.0.1:0"]
        argv += ["--hostname", "bench.test", "--dns-zone", str(work / "bench.zone")]
        argv += ["--workers", str(opts.workers), "--spool", f"s3://{res.spool}/in/"]
        argv += ["--queue", res.queue]
        receivers.append(lab.start(name, argv, lab.aws_env()))
    wait_event(receivers, "server.started", 90)
    for r in receivers:
        (started,) = r.lines("server.started")
        r.port = int(started["listen"].rpartition(":")[2])
    return receivers


def send_load(
    lab: Lab, receivers: list[Child], moto: Child, opts: Options, row: Row
) -> tuple[float, tuple[int, int] | None]:
    """One smtp-source per receiver, SESSIONS/N sessions and MESSAGES/N messages each, all at
    once; returns when the last one exited, with their CPU seconds (rusage when reaped) and
    (messages spooled, moto's ticks) once half of them were (the queue half as deep)."""
    n = len(receivers)
    sources = []
    for r, sessions, messages in zip(
        receivers, split(opts.sessions, n), split(opts.messages, n), strict=True
    ):
        argv = ["smtp-source", "-s", str(max(sessions, 1)), "-m", str(messages)]
        argv += ["-l", str(opts.size), "-f", SENDER, "-t", f"rcpt@{DOMAIN}"]
        argv += ["-M", "client.sender.example", f"127.0.0.1:{r.port}"]
        sources.append(lab.start(f"smtp-source-{n}-{r.port}", argv))
    load = 0.0
    halfway: tuple[int, int] | None = None
    pending = {s.pid: s for s in sources}
    end = time.monotonic() + 300 + opts.messages / 5
    while pending and time.monotonic() < end:
        for pid, source in list(pending.items()):
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                source.process.returncode = code = os.waitstatus_to_exitcode(status)
                load += usage.ru_utime + usage.ru_stime
                del pending[pid]
                lab.children.remove(source)
                if code != 0:
                    tail = source.log.read_text(errors="replace")[-300:]
                    row.failures.append(f"{source.name} exited {code}: {tail}")
        if halfway is None:
            spooled = sum(r.count("message.spooled")["message.spooled"] for r in receivers)
            if spooled >= opts.messages / 2:
                halfway = (spooled, ticks_of([moto.pid])[moto.pid])
        time.sleep(0.02)
    for source in pending.values():
        row.failures.append(f"{source.name} did not finish")
        lab.stop(source)
    return load, halfway


def receive(lab: Lab, moto: Child, res: Resources, opts: Options, row: Row) -> set[str]:
    """The receive phase of row N; the message IDs that got a 250."""
    n = row.n
    receivers = start_receivers(lab, res, opts, n)
    pids = [r.pid for r in receivers]
    settle([*pids, moto.pid])
    before, moto0, machine0 = ticks_of(pids), ticks_of([moto.pid]), machine_ticks()
    t0 = time.monotonic()
    load, halfway = send_load(lab, receivers, moto, opts, row)
    t1 = time.monotonic()
    # Rates over the wall time; CPU per message until the receivers and moto are idle again.
    at_t1, machine1 = ticks_of([*pids, moto.pid]), machine_ticks()
    settle([*pids, moto.pid])
    after, moto1 = ticks_of(pids), ticks_of([moto.pid])

    codes: Counter[int] = Counter()
    accepted: set[str] = set()
    for r in receivers:
        codes.update(int(line["code"]) for line in r.lines("message.received"))
        accepted.update(str(line["message_id"]) for line in r.lines("message.spooled"))
        lab.stop(r)
    if codes != Counter({250: opts.messages}) or len(accepted) != opts.messages:
        row.failures.append(f"SMTP replies {dict(codes)}, {len(accepted)} spooled")
    wall = t1 - t0
    row.receive = Phase(
        role="receivers",
        n=n,
        messages=opts.messages,
        wall=wall,
        role_ticks=sum(after.values()) - sum(before.values()),
        busiest=max((at_t1[p] - before[p]) / TICKS / wall for p in pids),
        moto_ticks=moto1[moto.pid] - moto0[moto.pid],
        load_ticks=round(load * TICKS),
        machine_ticks=machine1 - machine0,
        role_window_ticks=sum(at_t1[p] - before[p] for p in pids),
        moto_window_ticks=at_t1[moto.pid] - moto0[moto.pid],
    )
    if halfway is not None and 0 < halfway[0] < opts.messages:
        first = (halfway[1] - moto0[moto.pid]) * 1000 / TICKS / halfway[0]
        second = (moto1[moto.pid] - halfway[1]) * 1000 / TICKS / (opts.messages - halfway[0])
        row.receive.moto_halves = (first, second)
    note(f"{n} receiver(s): {opts.messages / wall:.0f} msg/s")

    check_spool(lab, res, accepted, row)
    return accepted


def consume(lab: Lab, moto: Child, res: Resources, opts: Options, row: Row) -> Counter[str]:
    """The consume phase of row N: N consumers drain the full queue. Returns how many times
    each SQS message (by its SQS message ID) was handled successfully."""
    n = row.n
    consumers = []
    for i in range(n):
        argv = [opts.python, "-m", "inbound", "ses", "consume", "--queue", res.queue]
        argv += ["--named-rules-only", "--concurrency", str(opts.concurrency), "--wait", "10"]
        consumers.append(lab.start(f"consumer-{n}-{i}", argv, lab.aws_env()))
    wait_event(consumers, "sqs.consuming", 90)
    pids = [c.pid for c in consumers]
    before, moto0, machine0 = ticks_of(pids), ticks_of([moto.pid]), machine_ticks()
    t0 = time.monotonic()
    done0 = sum(c.count("sqs.succeeded")["sqs.succeeded"] for c in consumers)
    end = t0 + 300 + opts.messages / 2
    done = failed = 0
    # Moto's CPU at the half-way mark: its cost per message in the deep half of the queue
    # against the shallow half (moto's SQS scans the whole queue on every receive).
    half = (done0 + opts.messages) / 2
    halfway: tuple[int, int] | None = None  # (messages done, moto ticks)
    while time.monotonic() < end:
        counts = [c.count("sqs.succeeded", "sqs.failed") for c in consumers]
        done = sum(c["sqs.succeeded"] for c in counts)
        failed = sum(c["sqs.failed"] for c in counts)
        if halfway is None and done >= half:
            halfway = (done, ticks_of([moto.pid])[moto.pid])
        # Moto may deliver one notification to two consumers at once: done counts it twice.
        if done >= opts.messages and len(succeeded(consumers)) >= opts.messages:
            break
        time.sleep(0.05)
    t1 = time.monotonic()
    after, moto1, machine1 = ticks_of(pids), ticks_of([moto.pid]), machine_ticks()
    for c in consumers:
        lab.stop(c)
    handled = succeeded(consumers)
    if len(handled) != opts.messages or failed:
        row.failures.append(f"consumers: {len(handled)} succeeded, {failed} failed")
    wall = t1 - t0
    row.consume = Phase(
        role="consumers",
        n=n,
        messages=max(done - done0, 1),
        wall=wall,
        role_ticks=sum(after.values()) - sum(before.values()),
        busiest=max((after[p] - before[p]) / TICKS / wall for p in pids),
        moto_ticks=moto1[moto.pid] - moto0[moto.pid],
        load_ticks=0,
        machine_ticks=machine1 - machine0,
        role_window_ticks=sum(after.values()) - sum(before.values()),
        moto_window_ticks=moto1[moto.pid] - moto0[moto.pid],
        before_window=done0,
    )
    if halfway is not None and done0 < halfway[0] < done:
        deep = (halfway[1] - moto0[moto.pid]) * 1000 / TICKS / (halfway[0] - done0)
        shallow = (moto1[moto.pid] - halfway[1]) * 1000 / TICKS / (done - halfway[0])
        row.consume.moto_halves = (deep, shallow)
    note(f"{n} consumer(s): {(done - done0) / wall:.0f} msg/s")
    return handled


def succeeded(consumers: list[Child]) -> Counter[str]:
    """How many times the consumers handled each SQS message (by its SQS message ID)."""
    handled: Counter[str] = Counter()
    for c in consumers:
        handled.update(str(line["sqs_message_id"]) for line in c.lines("sqs.succeeded"))
    return handled


def run(lab: Lab, opts: Options) -> list[Row]:
    rows = []
    for n in opts.counts:
        row = Row(n)
        rows.append(row)
        moto = lab.start_moto(f"moto-{n}")
        res = create_resources(lab)
        accepted = receive(lab, moto, res, opts, row)
        handled = consume(lab, moto, res, opts, row)
        check_actions(lab, res, accepted, handled, row)
        lab.stop(moto)
        for failure in row.failures:
            note(f"FAILED with {n}: {failure}")
        for text in row.notes:
            note(f"with {n}: {text}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("messages", type=int, nargs="?", default=1000)
    parser.add_argument("sessions", type=int, nargs="?", default=10)
    parser.add_argument("size", type=int, nargs="?", default=10240)
    parser.add_argument("--counts", default="1,2,3", help="receiver/consumer counts (1,2,3)")
    parser.add_argument("--concurrency", type=int, default=8, help="each consumer's (8)")
    parser.add_argument("--workers", type=int, default=1, help="each receiver's (1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    opts = Options(
        messages=args.messages,
        sessions=args.sessions,
        size=args.size,
        counts=[int(c) for c in args.counts.split(",")],
        concurrency=args.concurrency,
        workers=args.workers,
    )
    # SIGTERM ends the run like ^C: the processes it started are stopped (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="inbound-cluster."))
    lab = Lab(work)
    try:
        rows = run(lab, opts)
    finally:
        lab.close()
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    conditions = (
        f"{opts.messages} messages of {opts.size} bytes per count; SMTP: smtp-source, "
        f"{opts.sessions} sessions split across the receivers, a new connection per message; "
        f"receivers --workers {opts.workers}; consumers --concurrency {opts.concurrency}"
    )
    failed = report(rows, conditions, version("moto"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
