"""`inbound webhook sample RULES --eml FILE [--rule NAME]`: the HTTP request a webhook action
would send for a message, signature included, so an application developer can build (and
test) the endpoint against it.

The message is evaluated as `inbound evaluate` evaluates it (recipients: `--rcpt`, else the
message's To and Cc addresses) and every webhook request of the plan (of `--rule` only, if
given) is printed as it would go on the wire: request line, headers, blank line, the body's
exact bytes (the signature covers them). The signing secret comes from the action's
`secret_env`, as in `inbound serve`: unset is exit 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inbound.cli.evaluate import parse_verdicts, show_webhooks
from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import InputError
from inbound.core.ids import MessageIdGenerator
from inbound.core.services import HttpRequest
from inbound.receive.limits import ReceiverLimits
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.rules.load import load_rule_set
from inbound.testing.received import receive_file, refuse_as_serve
from inbound.testing.run import default_sender


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("webhook", help="webhook tools: print a sample request")
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    sample = tools.add_parser(
        "sample", help="print the request a webhook action would send for a message"
    )
    sample.add_argument("rules", type=Path, metavar="RULES", help="the rule file")
    sample.add_argument(
        "--eml", type=Path, required=True, metavar="FILE", help="the message (.eml), or -"
    )
    sample.add_argument("--rule", metavar="NAME", help="only this rule's webhook actions")
    sample.add_argument(
        "--rcpt",
        action="append",
        default=[],
        metavar="ADDR",
        help="an envelope recipient (default: the message's To and Cc addresses)",
    )
    sample.add_argument(
        "--mail-from", metavar="ADDR", help="envelope sender (default: the From address)"
    )
    sample.add_argument(
        "--verdict",
        action="append",
        default=[],
        metavar="KIND=STATUS",
        help="as for inbound evaluate (default: spf/dkim/dmarc GRAY)",
    )
    sample.add_argument(
        "--json", action="store_true", help="print the requests as JSON (url, headers, body)"
    )
    sample.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rules = CompiledRuleSet.build(load_rule_set(args.rules).rule_set)
    names = [rule.name for rule in rules.rules]
    if args.rule is not None and args.rule not in names:
        close = difflib.get_close_matches(args.rule, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"--rule {args.rule}: no such rule in {args.rules}{hint}")
    received = receive_file(args.eml, ReceiverLimits())
    facts = received.facts
    recipients = tuple(args.rcpt) or (*facts.to_addresses, *facts.cc_addresses)
    if not recipients:
        raise InputError(f"{args.eml}: no To or Cc address in it: give --rcpt ADDR")
    mail_from = args.mail_from if args.mail_from is not None else default_sender(facts)
    connection = Connection(ip_address("127.0.0.1"), "localhost", tls=True)
    envelope = Envelope(mail_from, recipients)
    plan = evaluate(
        rules,
        message_id=MessageIdGenerator().next(),
        connection=connection,
        envelope=envelope,
        message=facts,
        verdicts=parse_verdicts(args.verdict).to_verdicts(),
        lambda_results=results_by_function({}),
    )
    plan = refuse_as_serve(plan, received)
    previews = [
        preview
        for preview in show_webhooks(plan, received.data, envelope, connection)
        if args.rule is None or preview.rule == args.rule
    ]
    if not previews:
        ran = ", ".join(run.name for run in plan.rules) or "none"
        print(
            f"{args.rules}: no webhook action runs for this message "
            f"(outcome {plan.outcome}; rules that applied: {ran})",
            file=sys.stderr,
        )
        return 1
    if unsigned := [p for p in previews if p.unsigned is not None]:
        reasons = "; ".join(f"rule {p.rule}: {p.unsigned}" for p in unsigned)
        raise InputError(f"{args.rules}: {reasons}: export the secret the endpoint verifies with")
    if args.json:
        print(json.dumps([p.as_json() for p in previews], indent=2, ensure_ascii=False))
        return 0
    out = sys.stdout.buffer
    for i, preview in enumerate(previews):
        if i:
            out.write(b"\n\n")
        out.write(wire(preview.request))
    out.flush()
    return 0


def wire(request: HttpRequest) -> bytes:
    """The request as HTTP/1.1 puts it on the wire (RFC 9112 §3), body bytes as sent."""
    parts = urlsplit(request.url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    lines.append(f"Content-Length: {len(request.body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8") + request.body
