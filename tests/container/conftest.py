"""Fixtures of the container tests: the engine, the image of this checkout (built once per
session; its size and build time are printed in the summary) and per-test containers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.container.engine import (
    BUILT,
    LOCAL_PYTHON,
    Containers,
    Docker,
    Image,
    build,
    containers,
    engine,
)
from tests.integration.daemons import start_moto


@pytest.fixture(scope="session")
def docker() -> Docker:
    return engine()


@pytest.fixture(scope="session")
def image(
    docker: Docker, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Image:
    built = build(
        docker,
        tmp_path_factory.mktemp("image"),
        tag="inbound:test",
        local_base=LOCAL_PYTHON,
        base_env="INBOUND_TEST_DOCKER_BASE",
    )
    pytestconfig.stash.setdefault(BUILT, []).append(built)
    return built


@pytest.fixture
def run(docker: Docker, image: Image) -> Iterator[Containers]:
    yield from containers(docker, image)


@pytest.fixture(scope="session")
def moto() -> Iterator[str]:
    yield from start_moto()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for built in config.stash.get(BUILT, []):
        terminalreporter.write_line(built.describe())
