"""What `bench/cluster.py` measured, and the table it prints: per phase the rate, each role's
CPU per message (the role's processes, moto's), moto's busy fraction of its one core, the
machine's busy cores, and which of them limited the rate (the bottleneck line)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cluster_lab import TICKS

# A process at this fraction of one core is saturated: moto and `--workers 1` receivers are
# single Python processes (one GIL), so one core is all they can use.
SATURATED = 0.85
# The machine is saturated when this fraction of all its cores is busy.
MACHINE_SATURATED = 0.9


@dataclass
class Phase:
    """One phase of one count: what the role's processes, moto and the machine used."""

    role: str  # "receivers" or "consumers"
    n: int
    messages: int  # done in the measured window
    wall: float  # seconds
    role_ticks: int  # all the role's processes (their trees)
    busiest: float  # the busiest role process, fraction of one core
    moto_ticks: int
    load_ticks: int  # smtp-source
    machine_ticks: int  # every process on the machine, over the wall time
    # The role's and moto's ticks over the wall time (the totals above include the receivers'
    # tail, until they and moto were idle): the busy fractions are of these.
    role_window_ticks: int
    moto_window_ticks: int
    before_window: int = 0  # consumers: messages done before all N were consuming
    # moto's CPU ms/msg over the first half of the messages and over the second (receive: the
    # queue growing, consume: shrinking)
    moto_halves: tuple[float, float] | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.wall

    def ms(self, ticks: int) -> float:
        return ticks * 1000 / TICKS / self.messages

    def cores(self, ticks: int) -> float:
        return ticks / TICKS / self.wall

    @property
    def moto_busy(self) -> float:
        return self.cores(self.moto_window_ticks)

    @property
    def moto_share(self) -> float:
        """Moto's part of the CPU this phase's processes used."""
        ours = self.role_ticks + self.moto_ticks + self.load_ticks
        return self.moto_ticks / ours if ours else 0.0

    @property
    def others(self) -> float:
        """Cores that processes outside this phase used (this script, other work)."""
        ours = self.role_window_ticks + self.moto_window_ticks + self.load_ticks
        return self.cores(max(self.machine_ticks - ours, 0))


@dataclass
class Row:
    """What one count N measured and checked."""

    n: int
    receive: Phase | None = None
    consume: Phase | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what moto did on its own


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def bottleneck(p: Phase) -> str:
    """Which resource limited this phase's rate, from what it measured, and what each side
    would sustain with a free core of its own."""
    one = p.role[:-1]
    machine = p.cores(p.machine_ticks)
    if p.moto_busy >= SATURATED:
        verdict = (
            f"moto: its single process was busy {p.moto_busy:.0%} of one core (saturated), so "
            f"{p.rate:.0f} msg/s is moto's ceiling here, not inbound's"
        )
    elif machine >= MACHINE_SATURATED * cpus():
        verdict = (
            f"the CPU: {machine:.1f} of {cpus()} cores busy ({p.role} "
            f"{p.cores(p.role_window_ticks):.2f}, moto {p.moto_busy:.2f}, smtp-source "
            f"{p.cores(p.load_ticks):.2f}, other processes {p.others:.2f}), so more {p.role} "
            f"cannot go faster on these cores"
        )
    elif p.busiest >= SATURATED:
        verdict = (
            f"the {one} process: one was busy {p.busiest:.0%} of a core (one Python process), "
            f"so more {p.role} would go faster"
        )
    else:
        waits = "SMTP sessions" if p.role == "receivers" else "--concurrency slots"
        verdict = (
            f"nothing saturated (moto {p.moto_busy:.0%} of its core, the busiest {one} "
            f"{p.busiest:.0%}, the machine {machine:.1f} of {cpus()} cores): the {waits} "
            f"waiting on the S3/SQS/SNS round trips bound it, or a process's GIL (a Python "
            f"process with many threads can be held below a full core by it)"
        )
    moto_cap, role_cap = 1000 / p.ms(p.moto_ticks), 1000 / p.ms(p.role_ticks)
    if moto_cap < role_cap:
        where = f"moto is the ceiling even for a single {one}"
    else:
        where = f"moto is the ceiling from {int(moto_cap // role_cap) + 1} {p.role} on"
    return (
        f"{verdict}. With a core each, moto would cap this phase at {moto_cap:.0f} msg/s and "
        f"each {one} at {role_cap:.0f} msg/s: {where}"
    )


def report(rows: list[Row], conditions: str, moto_version: str) -> bool:
    """Print the table under `conditions` (what was sent, how); True when a check failed."""
    print(
        f"\n{conditions}; {cpus()} cores.\n"
        f"moto server {moto_version}: one Python process for S3, SQS and SNS, a fresh one per "
        f"count. The receive phase (no consumer running) and the consume phase (the queue "
        f"full, no receiver running) are measured apart: each rate is that role's own."
    )
    head = (
        f"{'phase':<9} {'n':>2} {'msg/s':>6} {'CPU ms/msg':>10} {'busiest':>7} "
        f"{'moto ms/msg':>11} {'moto busy':>9} {'moto share':>10} {'cores busy':>10} "
        f"{'others':>6} {'msg/s/core':>10} {'moto cap':>8}  checks"
    )
    print(f"\n{head}")
    failed = False
    for row in rows:
        check = "ok" if not row.failures else "FAILED: " + "; ".join(row.failures)
        check += " (note below)" if row.notes else ""
        failed = failed or bool(row.failures)
        for p in (row.receive, row.consume):
            if p is None:
                continue
            print(
                f"{p.role[:-2]:<9} {p.n:>2} {p.rate:>6.0f} {p.ms(p.role_ticks):>10.2f} "
                f"{p.busiest:>7.2f} {p.ms(p.moto_ticks):>11.2f} {p.moto_busy:>9.2f} "
                f"{p.moto_share:>10.0%} {p.cores(p.machine_ticks):>10.2f} {p.others:>6.2f} "
                f"{1000 / p.ms(p.role_ticks):>10.0f} {1000 / p.ms(p.moto_ticks):>8.0f}  {check}"
            )
    print(
        "\nCPU ms/msg: user + system of all the role's processes per message (receivers: "
        "SMTP, SPF/DKIM/DMARC, rules, S3 put, SQS send; consumers: SQS receive, S3 get, the "
        "S3 step ledger, the S3 and SNS actions, SQS delete); busiest: the busiest one of them, "
        "fraction of one core; moto busy: fraction of one core; moto share: moto's part of the "
        "CPU the phase's processes used (role, moto, smtp-source); cores busy: the whole "
        "machine; others: processes outside the phase (this script, other work on the "
        "machine); msg/s/core: 1000 / CPU ms/msg, what one core of the role would sustain if "
        "nothing else limited it; moto cap: 1000 / moto ms/msg, the most moto's one process "
        "can serve. CPU per message is the figure that survives a shared machine; "
        "msg/s does not."
    )
    print("\nbottleneck:")
    for row in rows:
        for p in (row.receive, row.consume):
            if p is not None:
                print(f"  {p.role} x{p.n}: {bottleneck(p)}")
    consumed = [r.consume for r in rows if r.consume and r.consume.before_window]
    if consumed:
        print(
            "  (consumers: "
            + ", ".join(f"x{p.n} did {p.before_window}" for p in consumed)
            + " messages before all of them were consuming; those are not in the window)"
        )
    halves = [
        f"{p.role} x{p.n} {p.moto_halves[0]:.1f} then {p.moto_halves[1]:.1f}"
        for row in rows
        for p in (row.receive, row.consume)
        if p is not None and p.moto_halves is not None
    ]
    print(
        "  moto's SQS scans the whole queue on every send, receive and delete (moto 5.2 works "
        "out the queue's attributes, visiting every message, on each SendMessage), so its cost "
        "per message grows with the queue's depth, up to MESSAGES; real SQS does not. Moto's "
        "CPU ms/msg in the first and the second half of each phase (receive: the queue "
        "growing; consume: shrinking): " + ", ".join(halves)
    )
    for row in rows:
        for text in row.notes:
            print(f"  note, x{row.n}: {text}")
    print(
        "\nchecked that every message got a 250 and was spooled with one notification, that the "
        "consumers stored (one S3 version) and published (one SNS notification) each exactly "
        "once, and that the queue was left empty: "
        + ("SOME FAILED, see the table" if failed else "all passed")
    )
    return failed
