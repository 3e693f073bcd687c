"""Observability: structured JSON logs and Prometheus metrics. Never message bodies."""
