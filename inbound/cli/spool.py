"""`inbound spool list|show|retry`: look at queued and dead-lettered messages, retry them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from inbound.core.errors import InputError
from inbound.core.ports import SpoolPort
from inbound.datadir import restrict_umask
from inbound.spool.retry import DispatchState, SpoolMeta
from inbound.spool.store import Spool

Messages = SpoolPort[SpoolMeta, DispatchState]


def add_parser(commands: Any) -> None:
    p = commands.add_parser("spool", help="look at and retry spooled messages")
    data_dir_help = "the receiver's --data-dir (default: inbound-data)"
    p.add_argument(
        "--data-dir", type=Path, default=Path("inbound-data"), metavar="DIR", help=data_dir_help
    )
    sub = p.add_subparsers(dest="spool_command", required=True, metavar="list|show|retry")
    # `--data-dir` is taken before or after the subcommand (`spool list --data-dir DIR`, as
    # the README writes it); SUPPRESS keeps the value given before when none comes after.
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR", help=data_dir_help
    )
    listing = sub.add_parser(
        "list", parents=[data_dir], help="queued and dead-lettered messages, oldest first"
    )
    listing.add_argument("--dead", action="store_true", help="only dead-lettered messages")
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser(
        "show", parents=[data_dir], help="one message: envelope, actions done, last error"
    )
    show.add_argument("message_id")
    retry = sub.add_parser(
        "retry", parents=[data_dir], help="retry dead-lettered (or deferred) messages now"
    )
    retry.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    retry.add_argument("--all", action="store_true", help="every dead-lettered message")
    p.set_defaults(run=run)


def _summary(spool: Messages, message_id: str, where: str) -> dict[str, object]:
    meta = spool.meta(message_id)
    state = spool.state(message_id)
    done = sum(1 for s in state.steps.values() if s.outcome == "succeeded")
    return {
        "message_id": message_id,
        "state": where,
        "received_at": meta.received_at.isoformat(),
        "from": meta.envelope.mail_from or "<>",
        "recipients": list(meta.envelope.rcpt_tos),
        "size": meta.size,
        "attempts": state.attempts,
        "actions_succeeded": done,
        # rule:action -> outcome of that action so far (attempts in brackets)
        "actions": {
            key: f"{step.outcome} ({step.attempts})" for key, step in sorted(state.steps.items())
        },
        "next_attempt_at": state.next_attempt_at.isoformat() if state.next_attempt_at else None,
        "last_error": state.dead_reason or state.last_error,
    }


def run(args: argparse.Namespace) -> int:
    if not (args.data_dir / "spool").is_dir():
        # Spool() would create it: a mistyped --data-dir would show an empty spool, and leave
        # a new directory behind.
        raise InputError(
            f"{args.data_dir}: no spool here (give the receiver's --data-dir; "
            "it makes the spool when it first starts)"
        )
    restrict_umask()  # `retry` writes the dispatch state: as private as the receiver's files
    spool: Messages = Spool(args.data_dir / "spool")
    if args.spool_command == "list":
        rows = [] if args.dead else [_summary(spool, m, "queued") for m in spool.queued()]
        rows += [_summary(spool, m, "dead") for m in spool.dead()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for row in rows:
            error = f"  last error: {row['last_error']}" if row["last_error"] else ""
            actions = row["actions"]
            assert isinstance(actions, dict)
            done = " ".join(f"{k}={v.split()[0]}" for k, v in actions.items()) or "none yet"
            print(
                f"{row['message_id']}  {row['state']:<6}  {row['received_at']}  "
                f"{row['from']} -> {', '.join(row['recipients'])}  "  # type: ignore[arg-type]
                f"attempts={row['attempts']}  actions: {done}{error}"
            )
        queued, dead = spool.depth()
        print(f"{queued} queued, {dead} dead")
        return 0
    if args.spool_command == "show":
        meta = spool.meta(args.message_id)
        state = spool.state(args.message_id)
        where = "dead" if args.message_id in spool.dead() else "queued"
        out = {"state": where, "meta": meta.to_json(), "dispatch": state.to_json()}
        print(json.dumps(out, indent=2))
        return 0
    targets = spool.dead() if args.all else args.message_ids
    for message_id in targets:
        spool.retry(message_id)
        print(f"{message_id}: queued for retry")
    if not targets:
        print("nothing to retry")
    return 0
