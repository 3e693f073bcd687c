"""Prometheus metrics of one receiver, on a registry of its own (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
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
