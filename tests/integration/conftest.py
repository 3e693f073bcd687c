"""Integration fixtures: the real scanner daemons, shared by every test that needs them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.daemons import Daemons, start_daemons


@pytest.fixture(scope="session")
def daemons() -> Iterator[Daemons]:
    yield from start_daemons()
