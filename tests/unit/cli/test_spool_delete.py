"""`inbound spool delete` while a server holds the data directory: what it refuses, and why."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from inbound.cli.main import main
from inbound.core.clock import utc_now
from inbound.spool.retry import DispatchState
from inbound.spool.store import Spool
from inbound.stages import lock_data_dir
from tests.unit.spool.test_store import spool_one


@pytest.mark.parametrize(
    ("delay", "said"), [(None, "it is due now"), (timedelta(seconds=8), "it is due in 8 s")]
)
def test_a_message_due_soon_is_refused_saying_when(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], delay: timedelta | None, said: str
) -> None:
    spool = Spool(tmp_path / "spool")
    message_id = spool_one(spool)
    if delay is not None:
        # A little over: the seconds still to go when the command looks are rounded.
        spool.defer(
            message_id, DispatchState(next_attempt_at=utc_now() + delay + timedelta(seconds=0.4))
        )
    serving = lock_data_dir(tmp_path)  # as a running `inbound serve` holds it
    try:
        code = main(["spool", "delete", "--data-dir", str(tmp_path), message_id])
    finally:
        serving.close()
    assert code == 1
    assert f"{message_id}: not deleted: {said} and the running inbound serve" in (
        capsys.readouterr().err
    )
    assert message_id in {p.name for p in (tmp_path / "spool" / "queue").iterdir()}
