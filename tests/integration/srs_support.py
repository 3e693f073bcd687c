"""A forward rule for the SRS tests: `preserve` with an `srs_domain`, so it signs with SRS."""

from __future__ import annotations

FORWARD_RULES = """\
version: 1
name: forwarding
domains: [example.com]
rules:
  - name: forward-team
    recipients: [team@example.com]
    actions:
      - type: forward
        to: [ops@dest.example]
        via: relay
        from_mode: preserve
        srs_domain: fwd.example.net
"""
