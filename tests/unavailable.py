"""The one way a test says a server or tool it needs is missing: a skip on a developer's
machine, a failure under CI=true (where .ci/run starts everything the tests need)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run starts what the tests need)")
    pytest.skip(reason)  # only outside CI: under CI=true the line above fails instead
