"""Integration fixtures shared by the tests that need them: the real scanner daemons, and a
moto server with the standard AWS configuration pointing at it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.ses import handler
from tests.integration.daemons import Daemons, start_daemons, start_moto


@pytest.fixture(scope="session")
def daemons() -> Iterator[Daemons]:
    yield from start_daemons()


@pytest.fixture(scope="session")
def moto() -> Iterator[str]:
    yield from start_moto()


@pytest.fixture
def aws(moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Only the standard AWS configuration, pointing at moto; nothing from the developer's."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for service in ("S3", "SNS", "SQS", "LAMBDA", "STS", "IAM", "KMS", "SES"):
        monkeypatch.delenv(f"AWS_ENDPOINT_URL_{service}", raising=False)
    for name in ("INBOUND_SES_BUCKET", "INBOUND_SES_PREFIX", "INBOUND_RULES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # Two corpus samples share a messageId: each test keeps its SES handler state apart.
    monkeypatch.setenv("INBOUND_SES_STATE_PREFIX", f"state-{uuid.uuid4().hex[:8]}/")
    handler.clear_caches()
    yield moto
    handler.clear_caches()
