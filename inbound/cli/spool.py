"""`inbound spool list|show|retry|delete|purge`: look at, retry and remove spooled messages
(`drain`, the hand-off to S3 + SQS, is `inbound.cli.drain`).

It opens the receiver's spool (`inbound.spool.store.Spool`) through its public interface and
describes each message with the rule set it was received with (kept by digest): its steps by
rule name and action type, and what is still to run, found by walking the evaluation with the
recorded outcomes as the dispatcher does (`inbound.run.runner.pending_steps`), running nothing.
`delete` and `purge` are `inbound.cli.spool_remove`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from inbound.actions import ActionModel
from inbound.cli import drain, spool_remove
from inbound.core.clock import utc_now
from inbound.core.errors import ConfigError, InputError
from inbound.core.ports import MessageSource
from inbound.core.steps import StepKey
from inbound.datadir import restrict_umask
from inbound.dispatch import message_facts
from inbound.message.source import FileSource
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import Evaluation, Step
from inbound.rules.load import parse_rule_set
from inbound.run.ledgers import SpoolLedger
from inbound.run.runner import pending_steps
from inbound.spool.retry import DispatchState, SpoolMeta
from inbound.spool.store import Spool, SpoolError

Row = dict[str, Any]


def add_parser(commands: Any) -> None:
    p = commands.add_parser("spool", help="look at, retry and delete spooled messages")
    data_dir_help = "the receiver's --data-dir (default: inbound-data)"
    p.add_argument(
        "--data-dir", type=Path, default=Path("inbound-data"), metavar="DIR", help=data_dir_help
    )
    sub = p.add_subparsers(
        dest="spool_command", required=True, metavar="list|show|retry|delete|purge|drain"
    )
    # `--data-dir` is taken before or after the subcommand (`spool list --data-dir DIR`, as
    # the README writes it); SUPPRESS keeps the value given before when none comes after.
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR", help=data_dir_help
    )
    listing = sub.add_parser(
        "list", parents=[data_dir], help="queued, deferred and dead-lettered messages, oldest first"
    )
    listing.add_argument("--dead", action="store_true", help="only dead-lettered messages")
    listing.add_argument("--json", action="store_true", help="one JSON array, a row per message")
    show = sub.add_parser(
        "show",
        parents=[data_dir],
        help="one message: envelope, file, actions done, what is still to run, next attempt",
    )
    show.add_argument("message_id", metavar="MESSAGE_ID", help="as `list` prints it")
    show.add_argument("--json", action="store_true", help="the same as one JSON object")
    retry = sub.add_parser(
        "retry", parents=[data_dir], help="retry dead-lettered (or deferred) messages now"
    )
    retry.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID", help="as `list` prints it")
    retry.add_argument("--all", action="store_true", help="every dead-lettered message")
    delete = sub.add_parser(
        "delete",
        parents=[data_dir],
        help="remove queued or dead-lettered messages (not one a running server may dispatch)",
    )
    delete.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID", help="as `list` prints it")
    purge = sub.add_parser(
        "purge", parents=[data_dir], help="remove dead-lettered messages; prints each one"
    )
    purge.add_argument(
        "--dead", action="store_true", help="dead letters (the default, and the only kind)"
    )
    purge.add_argument(
        "--older-than",
        metavar="DURATION",
        help="only those received longer ago than DURATION (30m, 12h, 7d)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="print what would be removed, remove nothing"
    )
    p.set_defaults(run=run)
    drain.add_parser(sub, data_dir)  # its own `run`


class _Rules:
    """The rule sets messages were received with, compiled once per digest."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._compiled: dict[tuple[str, frozenset[str]], CompiledRuleSet | str] = {}

    def get(self, meta: SpoolMeta) -> CompiledRuleSet | str:
        """The compiled rules, or why they cannot be had."""
        # A message's recipients were accepted with `serve --domain` in force, which the spool
        # does not record: their domains are ours, as they were at RCPT time.
        domains = frozenset(r.rpartition("@")[2] for r in meta.envelope.rcpt_tos if "@" in r)
        key = (meta.rules_digest, domains)
        if key not in self._compiled:
            try:
                text = self.spool.load_rules(meta.rules_digest)
                name = f"rule set {meta.rules_digest[:12]}"
                loaded = parse_rule_set(text, name, extra_domains=sorted(domains))
                self._compiled[key] = CompiledRuleSet.build(loaded.rule_set)
            except SpoolError as exc:
                self._compiled[key] = f"rule set not in the spool: {exc}"
            except ConfigError as exc:
                self._compiled[key] = f"rule set {meta.rules_digest[:12]} no longer loads: {exc}"
        return self._compiled[key]


def _name(rules: CompiledRuleSet | str, key: StepKey) -> str:
    """`support/S3` for the step key `0:0` (`#N`, its position, if the rule has two S3s)."""
    if isinstance(rules, str) or key.rule >= len(rules.rules):
        return str(key)
    rule = rules.rules[key.rule]
    if key.action >= len(rule.actions):
        return str(key)
    label = _name_of(rule.name, rule.actions, key.action)
    return label if key.recipient is None else f"{label} ({key.recipient})"


def _step_name(step: Step) -> str:
    return _name_of(step.rule.name, step.rule.actions, step.index)


def _name_of(rule: str, actions: Sequence[ActionModel], index: int) -> str:
    kind = actions[index].receipt_type
    many = sum(a.receipt_type == kind for a in actions) > 1
    return f"{rule}/{kind}" + (f"#{index + 1}" if many else "")


def _describe(
    spool: Spool, rules: _Rules, message_id: str, where: str, due: Mapping[str, datetime]
) -> Row:
    """Everything `list` and `show` say of one message."""
    meta = spool.meta(message_id)
    state = spool.state(message_id)
    compiled = rules.get(meta)
    source = spool.source(message_id)
    # When the scheduler runs it next: its due index entry (none: now); a dead letter never.
    when = due.get(message_id) if where == "queued" else None
    if when is not None and when > utc_now():
        where = "deferred"
    actions = [
        {
            "step": key,
            "name": _name(compiled, StepKey.parse(key)),
            "outcome": step.outcome,
            "attempts": step.attempts,
            "last_error": step.last_error,
        }
        for key, step in sorted(state.steps.items(), key=lambda kv: StepKey.parse(kv[0]))
    ]
    to_run, refused, problem = _to_run(spool, meta, state, compiled, source)
    return {
        "message_id": message_id,
        "state": where,
        "received_at": meta.received_at.isoformat(),
        "from": meta.envelope.mail_from or "<>",
        "recipients": list(meta.envelope.rcpt_tos),
        "client_ip": str(meta.connection.client_ip),
        "size": meta.size,
        "file": str(source.path) if isinstance(source, FileSource) else None,
        "rules_digest": meta.rules_digest,
        "attempts": state.attempts,
        "actions_succeeded": sum(1 for a in actions if a["outcome"] == "succeeded"),
        "actions": actions,
        # None: not known (`to_run_unknown` says why); [] nothing is left.
        "to_run": to_run,
        "to_run_unknown": problem,
        "refused": refused,
        "next_attempt_at": None if when is None else when.isoformat(),
        "last_error": state.dead_reason or state.last_error,
    }


def _to_run(
    spool: Spool,
    meta: SpoolMeta,
    state: DispatchState,
    rules: CompiledRuleSet | str,
    source: MessageSource,
) -> tuple[list[Row] | None, str | None, str | None]:
    """(steps still to run, why the message is refused, why the steps are not known)."""
    if isinstance(rules, str):
        return None, None, rules
    try:
        facts = message_facts(source, meta, rules)
    except OSError as exc:
        return None, None, f"cannot read the message: {exc.strerror or exc}"
    walk = Evaluation(
        rules,
        message_id=meta.message_id,
        connection=meta.connection,
        envelope=meta.envelope,
        message=facts,
        verdicts=meta.verdicts,
    )
    if walk.refused is not None:
        return [], walk.refused, None
    # A copy: the ledger only reads here, but nothing of the spool's state may change.
    ledger = SpoolLedger(spool, meta.message_id, DispatchState.from_json(state.to_json()))
    rows = [
        {
            "step": str(p.step.key),
            "name": _step_name(p.step),
            "attempts": p.record.attempts if p.record else 0,
            "last_error": p.record.last_error if p.record else None,
            "after": _step_name(p.after) if p.after else None,
        }
        for p in pending_steps(walk, ledger)
    ]
    return rows, None, None


def _listing(spool: Spool, dead_only: bool) -> list[Row]:
    rules, due = _Rules(spool), spool.due()
    rows = [] if dead_only else [_describe(spool, rules, m, "queued", due) for m in spool.queued()]
    return rows + [_describe(spool, rules, m, "dead", due) for m in spool.dead()]


def _print_row(row: Row) -> None:
    done = " ".join(f"{a['name']}={a['outcome']}" for a in row["actions"]) or "none yet"
    if row["to_run"] is None:
        left = "unknown"
    else:
        left = " ".join(s["name"] for s in row["to_run"]) or "nothing"
    when = f"  next: {row['next_attempt_at']}" if row["state"] == "deferred" else ""
    error = f"  last error: {row['last_error']}" if row["last_error"] else ""
    print(
        f"{row['message_id']}  {row['state']:<8}  {row['received_at']}  "
        f"{row['from']} -> {', '.join(row['recipients'])}  attempts={row['attempts']}  "
        f"actions: {done}  to run: {left}{when}{error}"
    )


def _print_show(row: Row) -> None:
    print(f"message     {row['message_id']}  ({row['state']})")
    print(f"received    {row['received_at']} from {row['client_ip']}, {row['size']} bytes")
    print(f"envelope    {row['from']} -> {', '.join(row['recipients'])}")
    print(f"file        {row['file']}")
    print(f"rule set    {row['rules_digest']}")
    print(f"attempts    {row['attempts']}")
    for a in row["actions"]:
        error = f": {a['last_error']}" if a["last_error"] else ""
        tries = f"{a['attempts']} attempt{'s' if a['attempts'] != 1 else ''}"
        print(f"  {a['outcome']:<9} {a['name']} ({a['step']}, {tries}){error}")
    if row["refused"]:
        print(f"refused     {row['refused']}")
    if row["to_run"] is None:
        print(f"to run      unknown: {row['to_run_unknown']}")
    elif not row["to_run"]:
        print("to run      nothing")
    for i, s in enumerate(row["to_run"] or ()):
        label = "to run" if i == 0 else ""
        tried = f", failed {s['attempts']}x" if s["attempts"] else ""
        after = f", if {s['after']} answers CONTINUE" if s["after"] else ""
        print(f"{label:<11} {s['name']} ({s['step']}{tried}{after})")
    if row["state"] == "dead":
        print(f"next try    none: dead-lettered (inbound spool retry {row['message_id']})")
    elif row["state"] == "queued":
        print(f"next try    now{f' (due since {t})' if (t := row['next_attempt_at']) else ''}")
    else:
        print(f"next try    {row['next_attempt_at']}")
    print(f"last error  {row['last_error'] or '-'}")


def run(args: argparse.Namespace) -> int:
    if not (args.data_dir / "spool").is_dir():
        # Spool() would create it: a mistyped --data-dir would show an empty spool, and leave
        # a new directory behind.
        raise InputError(
            f"{args.data_dir}: no spool here (give the receiver's --data-dir; "
            "it makes the spool when it first starts)"
        )
    restrict_umask()  # `retry` writes the dispatch state: as private as the receiver's files
    spool = Spool(args.data_dir / "spool")
    command = args.spool_command
    if command == "list":
        rows = _listing(spool, args.dead)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for row in rows:
            _print_row(row)
        queued, dead = spool.depth()
        print(f"{queued} queued, {dead} dead")
        return 0
    if command == "show":
        row = _describe(
            spool,
            _Rules(spool),
            args.message_id,
            spool_remove.place_of(spool, args.message_id),
            spool.due(),
        )
        if args.json:
            # With the records as kept, for what the summary leaves out (verdicts, facts).
            meta, state = spool.meta(args.message_id), spool.state(args.message_id)
            row |= {"meta": meta.to_json(), "dispatch": state.to_json()}
            print(json.dumps(row, indent=2))
        else:
            _print_show(row)
        return 0
    if command == "delete":
        return spool_remove.delete(spool, args.data_dir, args.message_ids)
    if command == "purge":
        older = (
            None
            if args.older_than is None
            else spool_remove.duration("--older-than", args.older_than)
        )
        return spool_remove.purge(spool, older, args.dry_run)
    targets = spool.dead() if args.all else args.message_ids
    for message_id in targets:
        spool.retry(message_id)
        print(f"{message_id}: queued for retry")
    if not targets:
        print("nothing to retry")
    return 0
