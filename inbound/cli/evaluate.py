"""`inbound evaluate`: the full decision for one message, without side effects."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inbound.cli.args import add_data_limit_flags, add_domain_flag, data_limits, pairs
from inbound.cli.render import plan_json, plan_trace
from inbound.cli.scanning import add_scan_flags, measure, scanners_from
from inbound.cli.serve import default_hostname
from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import InputError
from inbound.core.ids import MessageIdGenerator
from inbound.core.plan import Plan
from inbound.message.source import BytesSource
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.rules.load import load_rule_set
from inbound.testing.model import VerdictInput
from inbound.testing.received import receive_file, refuse_as_serve
from inbound.testing.run import default_sender
from inbound.testing.webhooks import WebhookPreview, preview_webhooks, webhook_urls


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("evaluate", help="decide one message against a rule set")
    parser.add_argument(
        "--rules",
        type=Path,
        required=True,
        metavar="RULES",
        help="the rule file (YAML or SES JSON)",
    )
    parser.add_argument(
        "--eml",
        type=Path,
        required=True,
        metavar="FILE",
        help="the message (.eml), or - for standard input; read as inbound serve receives it",
    )
    parser.add_argument(
        "--rcpt",
        action="append",
        required=True,
        metavar="ADDR",
        help="an envelope recipient (repeat for several)",
    )
    parser.add_argument(
        "--mail-from", metavar="ADDR", help="envelope sender (default: the From address; '' for <>)"
    )
    parser.add_argument(
        "--client-ip",
        default="127.0.0.1",
        metavar="IP",
        help="the address the client connects from",
    )
    parser.add_argument(
        "--helo", default="localhost", metavar="NAME", help="the name the client gives in HELO"
    )
    parser.add_argument("--tls", action="store_true", help="the session is under TLS")
    parser.add_argument(
        "--verdict",
        action="append",
        default=[],
        metavar="KIND=STATUS",
        help="spam|virus|spf|dkim|dmarc=PASS|FAIL|GRAY|PROCESSING_FAILED|"
        "DISABLED, or dmarc_policy=none|quarantine|reject",
    )
    parser.add_argument(
        "--lambda-result",
        action="append",
        default=[],
        metavar="NAME=DISPOSITION",
        help="what a request_response function returns (STOP_RULE, ...)",
    )
    add_domain_flag(parser)
    parser.add_argument("--json", action="store_true", help="print the SPEC section 6 object")
    parser.add_argument(
        "--scan",
        action="store_true",
        help="measure the verdicts with the scanners below instead of assuming them",
    )
    add_scan_flags(parser, "scanning (with --scan)")
    add_data_limit_flags(parser)
    parser.set_defaults(run=run)


def parse_verdicts(values: list[str]) -> VerdictInput:
    given = pairs("--verdict", values)
    try:
        return VerdictInput.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"--verdict: {problems}") from None


def run(args: argparse.Namespace) -> int:
    verdicts = parse_verdicts(args.verdict)
    lambda_results = pairs("--lambda-result", args.lambda_result)
    try:
        client_ip = ip_address(args.client_ip)
    except ValueError:
        raise InputError(f"--client-ip {args.client_ip!r}: not an IP address") from None
    rules = CompiledRuleSet.build(load_rule_set(args.rules, extra_domains=args.domain).rule_set)
    received = receive_file(args.eml, data_limits(args))
    message = received.facts
    mail_from = args.mail_from if args.mail_from is not None else default_sender(message)
    connection = Connection(client_ip, args.helo, args.tls)
    envelope = Envelope(mail_from, tuple(args.rcpt))
    source = BytesSource(received.data)
    measured = (
        measure(scanners_from(args), rules, source, connection, envelope) if args.scan else None
    )
    plan = evaluate(
        rules,
        message_id=MessageIdGenerator().next(),
        connection=connection,
        envelope=envelope,
        message=message,
        verdicts=verdicts.to_verdicts(measured),
        lambda_results=results_by_function(lambda_results),
    )
    plan = refuse_as_serve(plan, received)
    webhooks = show_webhooks(plan, received.data, envelope, connection)
    if args.json:
        shown = plan_json(plan, rules, mail_from)
        if webhooks:
            shown["webhooks"] = [preview.as_json() for preview in webhooks]
        print(json.dumps(shown, indent=2, ensure_ascii=False))
    else:
        print(plan_trace(plan, rules, mail_from))
        for preview in webhooks:
            print(describe_webhook(preview))
    return 0


def show_webhooks(
    plan: Plan, data: bytes, envelope: Envelope, connection: Connection
) -> list[WebhookPreview]:
    """The webhook requests the plan would send (signed when their secret_env is set)."""
    if not webhook_urls(plan):
        return []
    now = datetime.now(UTC)
    return asyncio.run(
        preview_webhooks(
            plan,
            data,
            envelope=envelope,
            connection=connection,
            hostname=default_hostname(),
            env=os.environ,
            now=now,
        )
    )


def describe_webhook(preview: WebhookPreview) -> str:
    request = preview.request
    signed = "signed" if preview.unsigned is None else f"unsigned: {preview.unsigned}"
    if not any(name == "webhook-signature" for name, _ in request.headers) and not preview.unsigned:
        signed = "unsigned: no secret_env"
    return (
        f"webhook {preview.rule} (step {preview.step}): POST {request.url}, "
        f"{len(request.body)} bytes, {signed} (--json shows the request)"
    )
