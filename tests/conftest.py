"""Shared test helpers: paths of the fixtures, and the logging that a test's in-process
`inbound serve` / `ses consume` configured, taken back after it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.observe.ratelimit import RateLimitedHandler

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CORPUS_EML = FIXTURES / "corpus" / "eml"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _forget_inbound_logging() -> Iterator[None]:
    """A test that runs `main(["serve", ...])` in-process has `observe.log.configure` point the
    `inbound` and root loggers at that test's captured stderr and stop `inbound` propagating.
    Left so, every later in-process receiver logs onto a closed stream ("--- Logging error
    ---") and `caplog` sees none of inbound's records: remove what configure() installed."""
    inbound = logging.getLogger("inbound")
    propagate, level = inbound.propagate, inbound.level
    yield
    for logger in (inbound, logging.getLogger()):
        for handler in list(logger.handlers):
            if isinstance(handler, RateLimitedHandler):
                logger.removeHandler(handler)
    inbound.propagate = propagate
    inbound.setLevel(level)
    logging.captureWarnings(False)
