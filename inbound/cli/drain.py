"""`inbound spool drain`: hand a local spool's queued messages to the S3 + SQS path (SPEC 7b).

This module owns the hand-off of one data directory's spool to `serve --spool s3://` storage,
for scale-down (a host leaving the pool takes no queue with it) and migrations. Each queued or
deferred message goes through the same `S3Committer` a receiver commits with, so what lands is
what that receiver would have stored: the rule set once per digest at PREFIX + rules/DIGEST.yaml
(the text from the spool's rules/DIGEST.txt), the message with its prepended headers at
PREFIX + ID, and its `Received` notification (the verdicts from the spool's meta, the digest as
a message attribute) on the queue.

Order, per message, and why:
1. the rule set, then the steps it already finished locally, merged into its S3 step ledger
   (`inbound.run.ledgers.S3Ledger`, the one `ses consume` reads) before anything names the
   message, so the consumer skips them: each action runs once across the two places;
2. the object, then the notification;
3. only then is the local copy removed. A failure or a kill anywhere before (3) leaves the
   message in the local spool: a later drain sends it again, and a second notification is
   harmless because the consumer's ledger records every step it finished (the object and the
   ledger are simply written again, the ledger merged, never emptied).

`--concurrency N` hands N messages over at once (each is two or three round trips to S3 and
SQS, so one at a time a large spool takes long); every message keeps the order above, and the
local spool is changed by one thread at a time.

Dead letters stay: the dispatcher gave up on them, and moving them would run them again on
the consumers; `inbound spool retry` makes one queued, and a drain then takes it. The drain
holds the data directory's lock throughout: while `inbound serve` runs it refuses (exit 2), as
the server may be running a message's actions right now, and no server starts meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbound.core.clock import utc_now
from inbound.core.errors import InputError
from inbound.core.steps import StepKey
from inbound.datadir import restrict_umask
from inbound.run.ledgers import S3Ledger
from inbound.ses.handler import DEFAULT_STATE_PREFIX
from inbound.spool.s3 import S3Committer, S3Spool
from inbound.spool.store import Spool
from inbound.stages import DataDirInUse, lock_data_dir

# Per request, as `serve --spool s3://` bounds a commit by --data-timeout: nobody waits on a
# drain, so a generous bound; a dead endpoint still fails fast (connection refused).
TIMEOUT = 60.0
CONCURRENCY = 8
MAX_CONCURRENCY = 64


def add_parser(sub: Any, data_dir: argparse.ArgumentParser) -> None:
    """`drain` under `inbound spool` (`sub`: its subcommands; `data_dir`: the shared flag)."""
    drain = sub.add_parser(
        "drain",
        parents=[data_dir],
        help="hand queued and deferred messages to S3 + SQS (serve --spool s3://), then remove "
        "them here",
    )
    drain.add_argument(
        "--spool", required=True, metavar="s3://BUCKET/PREFIX", help="as serve --spool takes it"
    )
    drain.add_argument(
        "--queue", required=True, metavar="URL", help="the SQS queue `ses consume` reads"
    )
    drain.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        metavar="N",
        help=f"hand up to N messages over at once (default {CONCURRENCY})",
    )
    drain.set_defaults(run=run)


@dataclass
class Drained:
    """What one run did: messages handed over, failed, and dead letters left alone."""

    drained: int = 0
    failed: int = 0
    dead: int = 0

    def summary(self) -> str:
        left = (
            f", {self.dead} dead left here (inbound spool retry, then drain)" if self.dead else ""
        )
        return f"{self.drained} drained, {self.failed} failed{left}"


class Drain:
    """One local spool into one S3 + SQS spool (see the module docstring for the order)."""

    def __init__(self, spool: Spool, committer: S3Committer, state_prefix: str) -> None:
        self.spool = spool
        self.committer = committer
        self.state_prefix = state_prefix
        self._digests: set[str] = set()
        self._local = threading.Lock()  # the local spool's writes, one thread at a time

    def message(self, message_id: str) -> int:
        """Hand one message over; the number of finished steps carried to its ledger."""
        meta = self.spool.meta(message_id)
        if meta.rules_digest not in self._digests:
            # The committer puts the text in S3 once per digest, before the first message
            # that names it (two threads reading it here both is harmless).
            digest = self.committer.save_rules(self.spool.load_rules(meta.rules_digest))
            if digest != meta.rules_digest:
                raise InputError(f"rules/{meta.rules_digest}.txt does not have that digest")
            self._digests.add(digest)
        carried = self._carry_steps(message_id)
        head = self.committer.store(self.spool.source(message_id), meta)
        self.committer.notify(head, meta)
        with self._local:
            self.spool.finish(message_id)  # only now: both are in S3 and SQS
        return carried

    def _carry_steps(self, message_id: str) -> int:
        """The local successes into the S3 ledger, merged with what it holds (a consumer may
        have run steps after an earlier, interrupted drain of this message)."""
        done = {
            StepKey.parse(key): record
            for key, record in self.spool.state(message_id).steps.items()
            if record.succeeded
        }
        if not done:
            return 0
        where = self.committer.where
        ledger = S3Ledger.load(
            self.committer.s3, where.bucket, f"{self.state_prefix}{message_id}.json", message_id
        )
        for key, record in done.items():
            ledger.put(key, record)
        asyncio.run(ledger.flush())
        return len(done)


def run(args: argparse.Namespace) -> int:
    where = S3Spool.parse(args.spool, args.queue)
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise InputError(f"--concurrency {args.concurrency}: expected 1 to {MAX_CONCURRENCY}")
    if not (args.data_dir / "spool").is_dir():
        raise InputError(f"{args.data_dir}: no spool here (give the receiver's --data-dir)")
    restrict_umask()
    try:
        lock = lock_data_dir(args.data_dir)
    except DataDirInUse:
        raise InputError(
            f"{args.data_dir}: an inbound serve is using this data directory; stop it first "
            "(it may be running these messages' actions now): nothing drained"
        ) from None
    try:
        spool = Spool(args.data_dir / "spool")
        committer = S3Committer(where, Path(args.data_dir) / "s3-tmp", timeout=TIMEOUT)
        # The prefix `ses consume` keeps its step ledgers under (the same variable).
        prefix = os.environ.get("INBOUND_SES_STATE_PREFIX", DEFAULT_STATE_PREFIX)
        return _drain_all(Drain(spool, committer, prefix), spool, args.concurrency)
    finally:
        lock.close()


def _drain_all(drain: Drain, spool: Spool, concurrency: int) -> int:
    due, now = spool.due(), utc_now()
    done = Drained(dead=len(spool.dead()))
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="inbound-drain")
    try:
        running: dict[str, Future[int]] = {
            message_id: pool.submit(drain.message, message_id) for message_id in spool.queued()
        }
        # One line per message, in the spool's order, each as soon as it and those before
        # it are done.
        for message_id, future in running.items():
            when = due.get(message_id)
            kind = "deferred" if when is not None and when > now else "queued"
            try:
                carried = future.result()
            except Exception as exc:  # botocore's errors, an unreadable file: it stays here
                print(f"{message_id}: not drained ({kind}, kept here): {_reason(exc)}", flush=True)
                done.failed += 1
                continue
            steps = f", {carried} finished step{'s' if carried != 1 else ''} carried"
            print(f"{message_id}: drained ({kind}{steps if carried else ''})", flush=True)
            done.drained += 1
    finally:
        # Ctrl-C: the messages not started stay here; those in flight finish their order.
        pool.shutdown(cancel_futures=True)
    print(done.summary())
    return 1 if done.failed else 0


def _reason(exc: Exception) -> str:
    # botocore's messages name the endpoint and the operation, never a credential.
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
