"""Prometheus metrics of one receiver, on a registry of its own (no module-level state).

`ReceiveMetrics` are counted where SMTP sessions run, `DispatchMetrics` where actions run;
`Metrics` is both, for a receiver in one process. With `--workers` the receiving processes
count in prometheus-client's multiprocess files and the supervisor serves their sum next to its
own dispatch metrics (`inbound.workers`).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector


class ReceiveMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "inbound_connections",
            "SMTP connections, by how they were answered",
            ["result"],
            registry=r,
        )
        self.messages = Counter(
            "inbound_messages", "Messages answered at DATA, by reply code", ["code"], registry=r
        )
        self.recipients_rejected = Counter(
            "inbound_recipients_rejected", "Recipients refused at RCPT TO", ["reason"], registry=r
        )


class DispatchMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.actions = Counter(
            "inbound_actions", "Actions run by the dispatcher", ["type", "outcome"], registry=r
        )
        self.spool_depth = Gauge(
            "inbound_spool_depth", "Messages in the spool", ["state"], registry=r
        )
        self.dispatch_latency = Histogram(
            "inbound_dispatch_latency_seconds",
            "From receipt to the last action done",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 14400),
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class Metrics(ReceiveMetrics, DispatchMetrics):
    """Every metric, on one registry: a receiver in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        ReceiveMetrics.__init__(self, registry)
        DispatchMetrics.__init__(self, registry)


def worker_metrics(directory: Path) -> ReceiveMetrics:
    """For a receiving worker process: counts go to files in `directory`, summed by the
    supervisor's `MultiProcessCollector`. Call before any other metric of this process exists."""
    # What PROMETHEUS_MULTIPROC_DIR selects when set before prometheus_client is imported.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return ReceiveMetrics()


def supervisor_metrics(workers_directory: Path) -> DispatchMetrics:
    """For the supervisor: its own dispatch metrics plus the workers' receive counts."""
    metrics = DispatchMetrics()
    MultiProcessCollector(metrics.registry, path=str(workers_directory))  # type: ignore[no-untyped-call]
    return metrics
