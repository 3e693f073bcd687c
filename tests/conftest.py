"""Shared test helpers: paths of the fixtures and a rule-set builder from YAML text."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CORPUS_EML = FIXTURES / "corpus" / "eml"


@pytest.fixture
def root() -> Path:
    return ROOT
