"""Connection limits shared by worker processes (`--workers`): one table, exact limits."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from inbound.receive.connections import ConnectionCounter, SharedConnections
from inbound.receive.limits import ReceiverLimits

LIMITS = ReceiverLimits(max_connections=3, max_connections_per_ip=2)


def table(tmp_path: Path, workers: int = 2) -> SharedConnections:
    return SharedConnections.create(
        workers, multiprocessing.get_context("spawn"), tmp_path / "connections.lock"
    )


def test_per_ip_and_total_limits_count_every_worker(tmp_path: Path) -> None:
    shared = table(tmp_path)
    one, two = (ConnectionCounter(shared=shared.for_worker(i)) for i in (0, 1))
    assert one.admit("192.0.2.1", LIMITS)
    assert two.admit("192.0.2.1", LIMITS)
    assert not one.admit("192.0.2.1", LIMITS), "the third from one IP, on either worker"
    assert not two.admit("192.0.2.1", LIMITS)
    assert two.admit("198.51.100.7", LIMITS)
    assert not one.admit("203.0.113.9", LIMITS), "three in total"
    two.release("192.0.2.1")
    assert one.admit("203.0.113.9", LIMITS)


def test_a_dead_workers_row_is_cleared_and_its_connections_forgotten(tmp_path: Path) -> None:
    shared = table(tmp_path)
    one, two = (ConnectionCounter(shared=shared.for_worker(i)) for i in (0, 1))
    assert two.admit("192.0.2.1", LIMITS)
    assert two.admit("192.0.2.1", LIMITS)
    assert not one.admit("192.0.2.1", LIMITS)
    shared.for_worker(1).clear()  # what the supervisor does when worker 1 exits
    assert one.admit("192.0.2.1", LIMITS)
    assert one.admit("192.0.2.1", LIMITS)
    assert not one.admit("192.0.2.1", LIMITS)


def test_a_release_never_goes_below_zero(tmp_path: Path) -> None:
    shared = table(tmp_path, workers=1)
    counter = ConnectionCounter(shared=shared.for_worker(0))
    shared.for_worker(0).clear()
    shared.release("192.0.2.1")  # after a clear, the worker's last sessions still end
    assert counter.admit("192.0.2.1", LIMITS)
    assert counter.admit("192.0.2.1", LIMITS)
    assert not counter.admit("192.0.2.1", LIMITS)


def test_a_worker_in_another_process_sees_the_same_table(tmp_path: Path) -> None:
    shared = table(tmp_path)
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_admit_twice, args=(shared.for_worker(1),))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert not ConnectionCounter(shared=shared.for_worker(0)).admit("192.0.2.1", LIMITS)


def _admit_twice(shared: SharedConnections) -> None:
    counter = ConnectionCounter(shared=shared)
    assert counter.admit("192.0.2.1", LIMITS)
    assert counter.admit("192.0.2.1", LIMITS)
