"""`inbound ses export|import|plan|apply`: the YAML rule set against a real SES receipt rule set
(`--lower-extensions` hands conditions to the guard Lambda, `--blue-green` switches whole sets);
`inbound ses consume`: the Lambda handler's work for `Received` notifications in an SQS queue.

`export` is offline; the others use boto3's `ses` (or `sqs`) client, configured only by the
standard AWS environment (SPEC section 8).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from inbound.cli.args import add_domain_flag
from inbound.core.errors import InputError
from inbound.observe.log import configure
from inbound.rules.load import load_rule_set
from inbound.rules.model import RuleSet
from inbound.ses import bluegreen, live
from inbound.ses.export import Guard, check_guard_arn, export_rule_set, ses_problems

LOWER_HELP = (
    "put a RequestResponse Lambda action (inbound.ses.guard_handler) first in each rule with "
    "when/unless conditions; {rule} in the ARN stands for the rule's name"
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "ses", help="export, import, plan or apply an SES rule set; consume notifications from SQS"
    )
    sub = parser.add_subparsers(dest="ses_command", required=True, metavar="SUBCOMMAND")

    export = sub.add_parser("export", help="print the SES JSON of a rule file")
    export.add_argument("rules", type=Path, metavar="RULES", help="the rule file")
    export.add_argument("--lower-extensions", metavar="GUARD_FUNCTION_ARN", help=LOWER_HELP)
    export.set_defaults(run=run_export)

    imp = sub.add_parser("import", help="print the YAML of a live SES rule set")
    which = imp.add_mutually_exclusive_group(required=True)
    which.add_argument("--rule-set", metavar="NAME", help="the rule set of this name")
    which.add_argument("--active", action="store_true", help="the active rule set")
    imp.add_argument("--no-filters", action="store_true", help="leave out the account's IP filters")
    add_domain_flag(imp)
    imp.set_defaults(run=run_import)

    for name, run, text in (
        ("plan", run_plan, "print the changes that make the live rule set equal to RULES"),
        ("apply", run_apply, "make the live rule set equal to RULES, then activate it"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("rules", type=Path, metavar="RULES", help="the rule file")
        cmd.add_argument("--rule-set", metavar="NAME", help="default: the rule file's name")
        cmd.add_argument("--lower-extensions", metavar="GUARD_FUNCTION_ARN", help=LOWER_HELP)
        cmd.add_argument(
            "--blue-green",
            action="store_true",
            help="clone the active set to NAME-<UTC timestamp>, change the clone, then activate it",
        )
        if name == "apply":
            cmd.add_argument(
                "--keep",
                type=int,
                default=1,
                metavar="N",
                help="with --blue-green: inactive NAME-<timestamp> sets to keep (default 1)",
            )
        cmd.add_argument(
            "--rate",
            type=float,
            default=live.DEFAULT_RATE,
            help="SES calls per second, at most 1 (the SES quota; default 1)",
        )
        # Tests against a local SES emulator only: lifts the 1-call-per-second ceiling.
        cmd.add_argument("--test-rate", type=float, default=None, help=argparse.SUPPRESS)
        cmd.set_defaults(run=run)

    consume = sub.add_parser(
        "consume", help="run the rules on SES Received notifications from an SQS queue"
    )
    consume.add_argument("--queue", required=True, metavar="URL", help="the SQS queue URL")
    consume.add_argument(
        "--wait", type=int, default=20, help="long-poll seconds, 0 to 20 (default 20)"
    )
    consume.add_argument(
        "--visibility",
        type=int,
        default=300,
        help="seconds a received message stays hidden before a retry (default 300)",
    )
    consume.add_argument(
        "--max-messages", type=int, default=None, metavar="N", help="stop after N messages"
    )
    consume.add_argument(
        "--rules",
        metavar="PATH",
        default=None,
        help="the rule set (default: $INBOUND_RULES); a notification of `inbound serve --spool "
        "s3://` names its own, read from S3 by digest",
    )
    consume.add_argument(
        "--named-rules-only",
        action="store_true",
        help="no --rules: run only notifications that name their rule set (inbound serve "
        "--spool s3://); any other fails and is left to the queue's redrive policy",
    )
    consume.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="run up to N messages at once in this process (default 1)",
    )
    consume.set_defaults(run=run_consume)


MAX_CONCURRENCY = 256


def _guard(args: argparse.Namespace) -> Guard | None:
    arn: str | None = args.lower_extensions
    if arn is None:
        return None
    problem = check_guard_arn(arn)
    if problem is not None:
        raise InputError(f"--lower-extensions: {problem}")
    return Guard(arn)


def run_export(args: argparse.Namespace) -> int:
    guard = _guard(args)
    rule_set = load_rule_set(args.rules).rule_set
    problems = ses_problems(rule_set, guard)
    if problems:
        for problem in problems:
            print(f"{args.rules}: {problem}", file=sys.stderr)
        count = len({p.rule for p in problems if p.rule is not None})
        what = f"{count} rule{'s' if count != 1 else ''}"
        many = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(f"{what} SES cannot express ({many})", file=sys.stderr)
        return 2
    print(json.dumps(export_rule_set(rule_set, guard), indent=2))
    return 0


def _throttled(args: argparse.Namespace) -> live.Throttled:
    test_rate: float | None = getattr(args, "test_rate", None)
    rate: float = getattr(args, "rate", live.DEFAULT_RATE)
    if test_rate is not None:
        rate = test_rate
    elif not 0 < rate <= live.DEFAULT_RATE:
        raise InputError(f"--rate {rate}: must be more than 0 and at most 1 call per second")
    return live.Throttled(live.ses_client(), rate)


def run_import(args: argparse.Namespace) -> int:
    ses = _throttled(args)
    name = None if args.active else args.rule_set
    text = live.import_yaml(ses, name, with_filters=not args.no_filters, domains=args.domain)
    sys.stdout.write(text)
    return 0


def _loaded(args: argparse.Namespace) -> tuple[live.Throttled, RuleSet, Guard | None]:
    guard = _guard(args)
    keep: int | None = getattr(args, "keep", None)  # apply only
    if keep is not None and keep < 0:
        raise InputError(f"--keep {keep}: must not be negative")
    rule_set = load_rule_set(args.rules).rule_set
    problems = ses_problems(rule_set, guard)
    if problems:
        raise InputError("; ".join(str(p) for p in problems))
    return _throttled(args), rule_set, guard


def run_plan(args: argparse.Namespace) -> int:
    ses, rule_set, guard = _loaded(args)
    if args.blue_green:
        return _plan_blue_green(args, ses, rule_set, guard)
    changes = live.plan(ses, rule_set, args.rule_set, guard)
    for change in changes:
        print(change)
    if not changes:
        print("no changes")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    ses, rule_set, guard = _loaded(args)
    if args.blue_green:
        return _apply_blue_green(args, ses, rule_set, guard)
    changes = live.plan(ses, rule_set, args.rule_set, guard)
    for change in changes:
        print(change)
        ses.call(change.operation, **change.request)
    print(f"{len(changes)} change{'s' if len(changes) != 1 else ''} applied")
    return 0


def _plan_blue_green(
    args: argparse.Namespace, ses: live.Throttled, rule_set: RuleSet, guard: Guard | None
) -> int:
    planned = bluegreen.plan_blue_green(ses, rule_set, args.rule_set, guard=guard)
    if not planned.changes:
        print(f"no changes: the active rule set {planned.active} equals {args.rules}")
        return 0
    for change in planned.changes:
        print(change)
    return 0


def _apply_blue_green(
    args: argparse.Namespace, ses: live.Throttled, rule_set: RuleSet, guard: Guard | None
) -> int:
    base = args.rule_set or rule_set.name
    planned = bluegreen.plan_blue_green(ses, rule_set, base, guard=guard)
    if not planned.changes:
        print(f"no changes: the active rule set {planned.active} equals {args.rules}")
        return 0
    done = 0  # the first change creates the new set (clone or create)
    try:
        for change in planned.changes:
            print(change)
            ses.call(change.operation, **change.request)
            done += 1
    except live.SesError as exc:
        # Mail still meets the set that was active. The half-built set goes, so that clean-up
        # never keeps it in place of a set that really was active.
        was = f"{planned.active} is still active" if planned.active else "no rule set is active"
        if done:
            _, code = ses.error_code("delete_receipt_rule_set", RuleSetName=planned.new)
            if code is None:
                was += f"; the unfinished {planned.new} was deleted"
            else:
                was += f"; delete the unfinished {planned.new} by hand ({code})"
        raise live.SesError(f"{exc}; {was}") from None
    cleanup = bluegreen.cleanup_changes(ses, base, active=planned.new, keep=args.keep)
    for change in cleanup:
        print(change)
        ses.call(change.operation, **change.request)
    count = len(planned.changes) + len(cleanup)
    print(f"{count} change{'s' if count != 1 else ''} applied")
    return 0


def run_consume(args: argparse.Namespace) -> int:
    # Imported here so the other subcommands do not load the handler and its targets.
    from inbound.ses import consume, handler  # noqa: PLC0415

    if not 0 <= args.wait <= 20:
        raise InputError(f"--wait {args.wait}: must be 0 to 20 seconds (the SQS long-poll limit)")
    if args.visibility < 0:
        raise InputError(f"--visibility {args.visibility}: must not be negative")
    if args.max_messages is not None and args.max_messages < 1:
        raise InputError(f"--max-messages {args.max_messages}: must be at least 1")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise InputError(f"--concurrency {args.concurrency}: expected 1 to {MAX_CONCURRENCY}")
    path = args.rules or os.environ.get("INBOUND_RULES")
    if not path and not args.named_rules_only:
        raise InputError(
            "no rule set: pass --rules PATH or set INBOUND_RULES (or --named-rules-only for "
            "the notifications of inbound serve --spool s3://)"
        )
    if path:
        # The handler reads INBOUND_RULES, as in the Lambda; check the rules before polling.
        os.environ["INBOUND_RULES"] = path
        handler.rules_at(path)
    configure()
    consumer = consume.Consumer(
        args.queue,
        wait=args.wait,
        visibility=args.visibility,
        max_messages=args.max_messages,
        concurrency=args.concurrency,
    )
    previous = {sig: signal.signal(sig, consumer.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        consumer.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 0
