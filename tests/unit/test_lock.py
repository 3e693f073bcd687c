"""The lock file, constraints.txt: it pins every package of a `.[dev]` install at one version
within pyproject.toml's bounds, and every install the project documents or runs uses it (the
README's commands, `.ci/run`, both pip installs of the Dockerfile). Under CI=true the test
environment itself must hold exactly the locked versions."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install -c constraints.txt -e '.[dev]'"


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~]+)", line)
        assert match, f"constraints.txt:{number}: not NAME==VERSION: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"constraints.txt:{number}: {name} pinned twice"
        found[name] = match[2]
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    locked = pins()
    assert "inbound" not in locked
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in constraints.txt"
        assert Version(locked[name]) in requirement.specifier, (
            f"constraints.txt pins {name}=={locked[name]}, outside pyproject's {requirement}"
        )


def test_every_package_the_pinned_ones_need_is_pinned_too() -> None:
    """Walks the installed distributions from inbound[dev]; a distribution installed at another
    version than its pin (a developer's own environment) is not followed, under CI it fails."""
    locked = pins()
    ci = os.environ.get("CI") == "true"
    todo = [(r, frozenset(r.extras)) for r in declared()]
    seen: set[str] = set()
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} (needed for {requirement}) is not in constraints.txt"
        if name in seen:
            continue
        seen.add(name)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            assert not ci, f"{name} is not installed"
            continue
        if installed != locked[name]:
            assert not ci, f"{name} {installed} is installed; constraints.txt pins {locked[name]}"
            continue
        for text in metadata.requires(name) or []:
            needed = Requirement(text)
            applies = needed.marker is None or any(
                needed.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            )
            if applies:
                todo.append((needed, frozenset(needed.extras)))


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI=true only: .ci/run's environment")
def test_under_ci_the_environment_holds_exactly_the_locked_versions() -> None:
    for name, version in pins().items():
        assert metadata.version(name) == version, name


def test_the_readme_ci_and_the_dockerfile_install_with_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pip install -c constraints.txt -e . && inbound serve" in quick_start
    assert f"{INSTALL} && pytest" in quick_start
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    assert INSTALL in run
    assert "pytest" in run
    commands = [line for line in run if not line.lstrip().startswith("#")]
    assert not any(re.search(r"pip install(?!.*-c constraints\.txt)", c) for c in commands)

    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n\\]*", dockerfile)
    assert len(installs) == 2
    assert all("-c /src/constraints.txt" in line for line in installs), installs
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt /src/", dockerfile, re.MULTILINE)
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
