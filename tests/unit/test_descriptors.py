"""The open-file limit `inbound serve` needs, and the gauge that refuses connections before the
descriptor table is full, on this process's real table."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from inbound.descriptors import DescriptorGauge, needed
from tests.conftest import ROOT


def test_each_process_needs_three_per_connection_and_a_reserve() -> None:
    assert needed(1000) == 3256
    assert needed(1000, workers=4) == 3256, "each worker may hold every connection"
    assert needed(1, workers=64) == 256 + 4 * 64, "the supervisor's own"


CHECK = textwrap.dedent(
    """
    import resource, sys
    from inbound.core.errors import InputError
    from inbound.descriptors import ensure_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))
    try:
        print(ensure_limit(int(sys.argv[1])), resource.getrlimit(resource.RLIMIT_NOFILE))
    except InputError as exc:
        print(exc)
    """
)


def check(max_connections: int) -> str:
    return subprocess.run(
        [sys.executable, "-c", CHECK, str(max_connections)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    ).stdout.strip()


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    assert check(256) == "1024 (1024, 1024)"


def test_connections_that_do_not_fit_say_how_to_fix_it() -> None:
    assert check(257) == (
        "--max-connections 257 needs 1027 open files per process (3 per connection and 256 in "
        "reserve), but the open-file limit is 1024 (hard limit 1024): lower --max-connections to "
        "256 or less, or raise the limit (`ulimit -n 1027` as root, LimitNOFILE=1027 in a "
        "systemd unit, `--ulimit nofile=1027` for docker run)"
    )


@pytest.fixture
def descriptors() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        os.close(fd)


def open_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_the_gauge_is_crowded_when_the_headroom_is_reached(descriptors: list[int]) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Crowded from 20 more open descriptors on: the headroom is everything above that.
    gauge = DescriptorGauge(headroom=soft - (open_count() + 20), recount_every=0.0)
    assert not gauge.crowded(0)
    while len(descriptors) < 19:
        descriptors.append(os.open(os.devnull, os.O_RDONLY))
        assert not gauge.crowded(0), len(descriptors)
    descriptors.append(os.open(os.devnull, os.O_RDONLY))
    assert gauge.crowded(0)
    # Admitting again takes a quarter of the headroom more (no line per connection at the edge).
    os.close(descriptors.pop())
    assert gauge.crowded(0)
    gauge.headroom = 8
    assert not gauge.crowded(0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_between_counts_the_gauge_follows_the_connections() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A clock that stands still: counted once, never again.
    gauge = DescriptorGauge(headroom=soft - (open_count() + 50), clock=lambda: 0.0)
    assert not gauge.crowded(0)
    assert not gauge.crowded(20)
    assert gauge.crowded(60), "60 connections more than at the count"
