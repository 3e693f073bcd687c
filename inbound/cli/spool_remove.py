"""`inbound spool delete` and `inbound spool purge`: removing spooled messages, never one a
running `inbound serve` may be dispatching (see `delete`).

`inbound.cli.spool` parses the command line and calls these; they go through the spool's public
interface (`inbound.spool.store.Spool`) and the data directory's lock only.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from inbound.config.fields import duration_in_seconds
from inbound.core.clock import utc_now
from inbound.core.errors import InputError
from inbound.spool.store import Spool
from inbound.stages import DataDirInUse, lock_data_dir

# While `inbound serve` runs, a queued message is deleted only if it is not due for this long:
# its scheduler rescans the spool every 5 s and forgets a message gone from it before its turn.
SAFE_MARGIN = timedelta(seconds=15)


def place_of(spool: Spool, message_id: str) -> str:
    """ "queued" or "dead"; `MessageNotFound` (exit 2) for an ID that is neither."""
    spool.meta(message_id)  # raises for a bad or unknown ID, naming it
    return "dead" if message_id in spool.dead() else "queued"


def delete(spool: Spool, data_dir: Path, message_ids: list[str]) -> int:
    """Remove each message. A dead letter is never touched by a running server, so it always
    goes. A queued one goes if no `inbound serve` holds the data directory (held by us
    meanwhile, so none starts and dispatches it while it is removed), or if it is deferred
    and not due within SAFE_MARGIN; otherwise the server may be running its actions right
    now, and it is left alone (exit 1)."""
    places = {m: place_of(spool, m) for m in message_ids}  # every ID checked before any goes
    lock: IO[bytes] | None = None
    serving = False
    if "queued" in places.values():
        try:
            lock = lock_data_dir(data_dir)
        except DataDirInUse:
            serving = True
    try:
        due, now = spool.due(), utc_now()
        refused = 0
        for message_id, place in places.items():
            when = due.get(message_id)
            if serving and place == "queued" and (when is None or when <= now + SAFE_MARGIN):
                # Say when: "due now" for one due in 6 s sent users looking for a bug.
                soon = (
                    "due now" if when is None or when <= now else f"due in {_seconds(when - now)}"
                )
                print(
                    f"{message_id}: not deleted: it is {soon} and the running inbound serve "
                    "may be dispatching it (wait until it is deferred or dead-lettered, "
                    "or stop the server)",
                    file=sys.stderr,
                )
                refused += 1
                continue
            spool.finish(message_id)
            print(f"{message_id}: deleted ({'deferred' if when and when > now else place})")
        return 1 if refused else 0
    finally:
        if lock is not None:
            lock.close()


def _seconds(delay: timedelta) -> str:
    return f"{max(1, round(delay.total_seconds()))} s"


def duration(flag: str, value: str) -> timedelta:
    seconds = duration_in_seconds(value)
    if seconds is None:
        raise InputError(f"{flag} {value!r}: expected a duration like 30m, 12h, 7d")
    return timedelta(seconds=seconds)


def purge(spool: Spool, older_than: timedelta | None, dry_run: bool) -> int:
    """Remove dead letters (received longer than `older_than` ago). Never a queued message:
    a dead letter is one the dispatcher has given up on, so a running server is no obstacle."""
    cutoff: datetime | None = None if older_than is None else utc_now() - older_than
    removed = 0
    for message_id in spool.dead():
        if cutoff is not None:
            received = spool.meta(message_id).received_at
            if received > cutoff:
                continue
        if not dry_run:
            spool.finish(message_id)
        print(f"{message_id}: {'would delete' if dry_run else 'deleted'} (dead)")
        removed += 1
    verb = "would be deleted" if dry_run else "deleted"
    print(f"{removed} dead letter{'s' if removed != 1 else ''} {verb}")
    return 0
