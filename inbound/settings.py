"""What `inbound serve` was asked for: `ServeSettings`, one frozen value made from the flags
(`inbound.cli.serve.settings_from`) and read by every builder of `inbound.app` and
`inbound.stages`. This module only holds it; it checks and builds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inbound.core.message import MimeLimits
from inbound.receive.limits import ReceiverLimits
from inbound.receive.proxy import ProxyTrust
from inbound.spool.retry import RetryPolicy
from inbound.spool.s3 import S3Spool


@dataclass(frozen=True)
class ServeSettings:
    rules: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "localhost"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    lambdas: Mapping[str, str] = field(default_factory=dict)
    metrics: tuple[str, int] | None = None
    limits: ReceiverLimits = field(default_factory=ReceiverLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    domains: tuple[str, ...] = ()
    # How long SIGTERM waits for the SMTP sessions in flight.
    drain_timeout: float = 30.0
    clamd: str | None = None
    spamd: str | None = None
    scan_timeout: float = 30.0
    # How far below spamd's threshold a score is GRAY rather than PASS.
    spam_gray_band: float = 2.0
    dns_timeout: float = 5.0
    # Answer DNS from these zone files instead of the network (tests, air-gapped setups).
    dns_zones: tuple[Path, ...] = ()
    targets: Literal["local", "aws"] = "local"
    # What an SNS action does with a message over 150 KB (SES bounces it).
    sns_oversize: Literal["bounce", "omit-content"] = "bounce"
    relay: tuple[str, int] | None = None
    # Receiving processes; more than one: a supervisor dispatches (inbound/workers.py).
    workers: int = 1
    # How far the attachment walk goes (--max-mime-parts, --max-mime-depth).
    mime_limits: MimeLimits = field(default_factory=MimeLimits)
    # The log's format on stderr: JSON lines, or text lines for a terminal (--log-format).
    log_format: Literal["json", "text"] = "json"
    # CA certificates trusted for webhook HTTPS besides the system store (--webhook-ca).
    webhook_ca: Path | None = None
    # `--spool s3://BUCKET/PREFIX --queue URL`: no local spool, no dispatch (SPEC section 7b).
    s3_spool: S3Spool | None = None
    # Balancers whose connections start with a PROXY v1/v2 header (--proxy-protocol).
    proxy_protocol: ProxyTrust | None = None
