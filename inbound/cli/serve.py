"""`inbound serve`: run the SMTP receiver (SPEC section 6).

Besides the flags, this module owns the entry points of the processes (this one, and each
worker's with `--workers`) and their signals, the only handlers inbound installs: SIGHUP
reloads the rules, SIGTERM drains and exits, Ctrl-C is SIGTERM's twin in the process it was
typed at (a worker leaves it to its supervisor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from inbound.app import Receiver
from inbound.cli.args import add_domain_flag, pairs
from inbound.cli.args import parse_size as _size
from inbound.config.fields import duration_in_seconds
from inbound.core.errors import InputError
from inbound.core.message import MAX_MIME_DEPTH, MimeLimits
from inbound.datadir import restrict_umask
from inbound.descriptors import ensure_limit
from inbound.observe.log import configure
from inbound.receive.limits import ReceiverLimits
from inbound.receive.proxy import BadNetworkError, ProxyTrust
from inbound.running import Controls
from inbound.settings import ServeSettings
from inbound.spool.retry import RetryPolicy
from inbound.spool.s3 import S3Spool
from inbound.targets.relay import parse_relay
from inbound.workers import Supervisor, WorkerArgs, run_worker

_DEFAULTS = ReceiverLimits()
_MAX_WORKERS = 64


def _host_port(flag: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"{flag} {value!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":2525" means every address


def _duration(flag: str, value: str) -> float:
    seconds = duration_in_seconds(value)
    if seconds is None:
        raise InputError(f"{flag} {value!r}: expected a duration like 30s, 10m, 4h")
    return seconds


def add_parser(commands: Any) -> None:
    p = commands.add_parser("serve", help="run the SMTP receiver")
    p.add_argument(
        "--rules",
        type=Path,
        required=True,
        metavar="RULES",
        help="the rule file; SIGHUP reloads it",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:2525",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:2525; port 0 picks a free one)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("inbound-data"),
        metavar="DIR",
        help="spool and local targets (default ./inbound-data)",
    )
    p.add_argument(
        "--hostname",
        metavar="NAME",
        help="our name in the greeting, the Received header and a self-signed certificate "
        "(default: the machine's fully qualified name; a warning at start if it has no dot)",
    )
    p.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="json: one JSON object per line (default); text: time, level, event and "
        "key=value fields, for a terminal",
    )
    p.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="offer STARTTLS with this PEM certificate"
    )
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="its PEM private key")
    p.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="offer STARTTLS with a generated certificate (development only)",
    )
    p.add_argument(
        "--targets",
        choices=["local", "aws"],
        default="local",
        help="where actions deliver: files under --data-dir, or AWS (S3, SNS, Lambda)",
    )
    p.add_argument(
        "--lambda",
        dest="lambdas",
        action="append",
        default=[],
        metavar="NAME=module:function",
        help="run a Lambda action as this function",
    )
    p.add_argument("--relay", metavar="HOST:PORT", help="outbound relay for bounce DSNs")
    p.add_argument(
        "--webhook-ca",
        type=Path,
        metavar="FILE",
        help="PEM CA certificates trusted for webhook HTTPS, besides the system store",
    )
    p.add_argument(
        "--sns-oversize",
        choices=["bounce", "omit-content"],
        default="bounce",
        help="an SNS action and a message over 150 KB: bounce it as SES does (default), "
        "or publish the notification without content",
    )
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument(
        "--spool",
        metavar="s3://BUCKET/PREFIX",
        help="keep no state: store each message in S3 and queue its notification (--queue); "
        "`inbound ses consume` runs the actions (SPEC 7b)",
    )
    p.add_argument("--queue", metavar="SQS_URL", help="the SQS queue of --spool's notifications")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="receive in N processes (one per core); a supervisor dispatches (default 1)",
    )
    p.add_argument("--clamd", metavar="ADDR", help="ClamAV clamd (host:port or unix socket)")
    p.add_argument("--spamd", metavar="ADDR", help="SpamAssassin spamd (host:port)")
    add_domain_flag(p)
    scan = p.add_argument_group("verdicts")
    scan.add_argument(
        "--scan-timeout",
        default="30s",
        metavar="DURATION",
        help="longest wait for clamd or spamd (then PROCESSING_FAILED)",
    )
    scan.add_argument(
        "--spam-gray-band",
        type=float,
        default=2.0,
        metavar="POINTS",
        help="scores this far below spamd's threshold are GRAY, not PASS",
    )
    scan.add_argument(
        "--dns-timeout",
        default="5s",
        metavar="DURATION",
        help="longest wait for one DNS answer (SPF, DKIM, DMARC)",
    )
    scan.add_argument(
        "--dns-zone",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="answer DNS from this zone file instead of the network (testing)",
    )
    limits = p.add_argument_group("limits")
    limits.add_argument(
        "--max-message-size",
        default="40MB",
        metavar="SIZE",
        help="advertised in SIZE; larger gets 552 5.3.4",
    )
    limits.add_argument(
        "--max-header-size",
        default="1MB",
        metavar="SIZE",
        help="largest header block (up to the first empty line); larger gets 552 5.3.4",
    )
    limits.add_argument(
        "--max-recipients",
        type=int,
        default=_DEFAULTS.max_recipients,
        metavar="N",
        help="recipients per message; more get 452 4.5.3",
    )
    limits.add_argument(
        "--max-line-length",
        type=int,
        default=_DEFAULTS.max_line_length,
        metavar="OCTETS",
        help="longest line, CRLF included; longer gets 500 5.5.2",
    )
    limits.add_argument(
        "--command-timeout",
        default="5m",
        metavar="DURATION",
        help="how long the client may take to send a command",
    )
    limits.add_argument(
        "--data-timeout",
        default="10m",
        metavar="DURATION",
        help="how long DATA may stay silent",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=_DEFAULTS.max_connections,
        metavar="N",
        help="connections at once; more get 421 4.7.0",
    )
    limits.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=_DEFAULTS.max_connections_per_ip,
        metavar="N",
        help="connections at once from one address; more get 421 4.7.0",
    )
    limits.add_argument(
        "--proxy-protocol",
        metavar="CIDR,...",
        help="connections from these addresses (load balancers) must start with a PROXY "
        "v1/v2 header, whose client address then counts; a header from elsewhere is refused",
    )
    limits.add_argument(
        "--max-junk-commands",
        type=int,
        default=_DEFAULTS.max_junk_commands,
        metavar="N",
        help="commands that do not advance a transaction (NOOP, RSET, a refused RCPT...) "
        "before 421 4.7.0",
    )
    limits.add_argument(
        "--max-session-time",
        default="30m",
        metavar="DURATION",
        help="the longest a connection may last, then 421 4.4.2",
    )
    limits.add_argument(
        "--max-mime-parts",
        type=int,
        default=MimeLimits().max_parts,
        metavar="N",
        help="parts the attachment walk reads; beyond, a rule needing attachments gets 554 5.6.0",
    )
    limits.add_argument(
        "--max-mime-depth",
        type=int,
        default=MimeLimits().max_depth,
        metavar="N",
        help=f"nesting levels the attachment walk reads (at most {MAX_MIME_DEPTH}); as above",
    )
    limits.add_argument(
        "--drain-timeout",
        default="30s",
        metavar="DURATION",
        help="on SIGTERM, how long transactions in flight may take",
    )
    limits.add_argument(
        "--max-retry-age",
        default="4h",
        metavar="DURATION",
        help="how long failing actions are retried before dead-lettering",
    )
    limits.add_argument(
        "--retry-delay",
        default="60s",
        metavar="DURATION",
        help="first retry delay; doubles up to --max-retry-delay",
    )
    limits.add_argument(
        "--max-retry-delay",
        default="1h",
        metavar="DURATION",
        help="the longest wait between two retries of a message",
    )
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> ServeSettings:
    host, port = _host_port("--listen", args.listen)
    if args.tls_self_signed and (args.tls_cert is not None or args.tls_key is not None):
        raise InputError(
            "--tls-self-signed and --tls-cert/--tls-key exclude each other: give a certificate "
            "and its key, or --tls-self-signed for development"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InputError("--tls-cert and --tls-key go together: give both, or neither")
    relay = parse_relay(args.relay) if args.relay else None
    lambdas = pairs("--lambda", args.lambdas)
    metrics = _host_port("--metrics", args.metrics) if args.metrics else None
    limits = ReceiverLimits(
        max_message_size=_size("--max-message-size", args.max_message_size),
        max_header_size=_size("--max-header-size", args.max_header_size),
        max_recipients=args.max_recipients,
        max_line_length=args.max_line_length,
        command_timeout=_duration("--command-timeout", args.command_timeout),
        data_timeout=_duration("--data-timeout", args.data_timeout),
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        max_junk_commands=args.max_junk_commands,
        max_session_time=_duration("--max-session-time", args.max_session_time),
    )
    retry = RetryPolicy(
        max_age=timedelta(seconds=_duration("--max-retry-age", args.max_retry_age)),
        base_delay=_duration("--retry-delay", args.retry_delay),
        max_delay=_duration("--max-retry-delay", args.max_retry_delay),
    )
    if args.max_mime_parts < 1:
        raise InputError(f"--max-mime-parts {args.max_mime_parts}: expected 1 or more")
    if not 1 <= args.max_mime_depth <= MAX_MIME_DEPTH:
        raise InputError(f"--max-mime-depth {args.max_mime_depth}: expected 1 to {MAX_MIME_DEPTH}")
    proxies = None
    if args.proxy_protocol is not None:
        try:
            proxies = ProxyTrust.parse(args.proxy_protocol)
        except BadNetworkError as exc:
            raise InputError(
                f"--proxy-protocol {exc.entry!r}: expected addresses or networks like "
                "10.0.0.0/8,2001:db8::/32"
            ) from None
    if not 1 <= args.workers <= _MAX_WORKERS:
        raise InputError(f"--workers {args.workers}: expected 1 to {_MAX_WORKERS}")
    return ServeSettings(
        rules=args.rules,
        data_dir=args.data_dir,
        host=host,
        port=port,
        hostname=args.hostname or default_hostname(),
        log_format=args.log_format,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_self_signed=args.tls_self_signed,
        lambdas=lambdas,
        metrics=metrics,
        limits=limits,
        retry=retry,
        domains=tuple(args.domain),
        drain_timeout=_duration("--drain-timeout", args.drain_timeout),
        clamd=args.clamd,
        spamd=args.spamd,
        scan_timeout=_duration("--scan-timeout", args.scan_timeout),
        spam_gray_band=args.spam_gray_band,
        dns_timeout=_duration("--dns-timeout", args.dns_timeout),
        dns_zones=tuple(args.dns_zone),
        targets=args.targets,
        sns_oversize=args.sns_oversize,
        relay=relay,
        workers=args.workers,
        mime_limits=MimeLimits(args.max_mime_parts, args.max_mime_depth),
        webhook_ca=args.webhook_ca,
        s3_spool=_s3_spool(args.spool, args.queue),
        proxy_protocol=proxies,
    )


def _s3_spool(url: str | None, queue: str | None) -> S3Spool | None:
    if url is None:
        if queue is not None:
            raise InputError("--queue goes with --spool s3://BUCKET/PREFIX")
        return None
    return S3Spool.parse(url, queue)


def default_hostname() -> str:
    """The machine's fully qualified name, as an MX names itself (RFC 5321 §4.1.1.1, §4.4):
    `getfqdn()` when it has a dot, else the canonical name of the host name, else the host
    name itself. `getfqdn()` alone says "localhost" where /etc/hosts lists that first."""
    name = socket.gethostname()
    candidates = [socket.getfqdn()]
    with contextlib.suppress(OSError):
        found = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
        candidates += [canonical for *_, canonical, _ in found if canonical]
    for candidate in candidates:
        if "." in candidate and not candidate.startswith("localhost"):
            return candidate
    return name or "localhost"


def run(args: argparse.Namespace) -> int:
    # First of all: a SIGHUP (a reload asked for while we start, or a terminal's hangup) waits
    # until its handler is in (`_answer_signals`); its default action would kill us silently.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    settings = settings_from(args)
    configure(text=settings.log_format == "text")
    restrict_umask()  # whatever a library creates in the data directory is private too
    ensure_limit(settings.limits.max_connections, settings.workers)
    server = Supervisor(settings, worker_process) if settings.workers > 1 else Receiver(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.run(_answer_signals))
    return 0


def _answer_signals(server: Controls) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    loop.add_signal_handler(signal.SIGINT, server.stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one sent meanwhile runs now


def _answer_signals_in_worker(server: Controls) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def worker_process(args: WorkerArgs) -> None:
    """The entry point of a worker process of `--workers N` (spawned: the supervisor names it)."""
    # Ctrl-C reaches every process of the terminal's group: the supervisor alone answers it,
    # with a SIGTERM to each worker once they are all running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As in `run`: the supervisor passes SIGHUP on only once every worker is ready, but a
    # restarted worker may get one while it starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    run_worker(args, _answer_signals_in_worker)
