"""A Lambda function for `inbound serve --lambda NAME=tests.integration.spool_functions:hold`.

`hold` keeps its message's dispatch running until the flag file `$INBOUND_TEST_LAMBDA_DIR/release`
exists (or 20 s pass), so a test can act on a message while the server is dispatching it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

ENV = "INBOUND_TEST_LAMBDA_DIR"
RELEASE_FLAG = "release"
HOLDING_FLAG = "holding"
LONGEST = 20.0


def hold(event: dict[str, Any], context: object) -> dict[str, str]:
    """Say it is running (the `holding` file), then wait for the release flag; continue."""
    directory = Path(os.environ[ENV])
    (directory / HOLDING_FLAG).touch()
    deadline = time.monotonic() + LONGEST
    while not (directory / RELEASE_FLAG).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"disposition": "CONTINUE"}
