"""`--scan` for the offline commands: the scanners of `inbound serve`, run on a fixture."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from inbound.core.envelope import Connection, Envelope
from inbound.core.ports import MessageSource
from inbound.core.verdicts import Verdicts
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import check_recipient, scanning_enabled
from inbound.scan.run import Scanners
from inbound.settings import ServeSettings
from inbound.stages import build_scanners


def add_scan_flags(parser: argparse.ArgumentParser, title: str) -> None:
    group = parser.add_argument_group(title)
    group.add_argument("--clamd", metavar="ADDR", help="ClamAV clamd (host:port or socket)")
    group.add_argument("--spamd", metavar="ADDR", help="SpamAssassin spamd (host:port)")
    group.add_argument(
        "--dns-zone",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="answer DNS from this zone file instead of the network",
    )
    group.add_argument(
        "--scan-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for clamd or spamd (then PROCESSING_FAILED)",
    )
    group.add_argument(
        "--dns-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="longest wait for one DNS answer (SPF, DKIM, DMARC)",
    )
    group.add_argument(
        "--spam-gray-band",
        type=float,
        default=2.0,
        metavar="POINTS",
        help="scores this far below spamd's threshold are GRAY, not PASS",
    )


def scanners_from(args: argparse.Namespace) -> Scanners:
    settings = ServeSettings(
        rules=Path(),
        data_dir=Path(),
        clamd=args.clamd,
        spamd=args.spamd,
        scan_timeout=args.scan_timeout,
        spam_gray_band=args.spam_gray_band,
        dns_timeout=args.dns_timeout,
        dns_zones=tuple(args.dns_zone),
    )
    return build_scanners(settings)


def measure(
    scanners: Scanners,
    rules: CompiledRuleSet,
    source: MessageSource,
    connection: Connection,
    envelope: Envelope,
) -> Verdicts:
    """What the receiver would measure for this message, with these rules."""
    accepted = [
        rcpt
        for rcpt in envelope.rcpt_tos
        if check_recipient(rules, rcpt, tls=connection.tls).accepted
    ]
    scanning = scanning_enabled(rules, accepted)

    async def run() -> Verdicts:
        outcome = await scanners.scan(
            source, scanning=scanning, connection=connection, envelope=envelope
        )
        return outcome.verdicts

    return asyncio.run(run())
