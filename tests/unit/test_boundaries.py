"""The package's seams, checked over its source: what a module may know of another.

- Only `inbound/spool/` knows how the spool lays out a message (its file names, directories);
  every other stage sees `inbound.core.ports` (so a different spool format touches one package).
- The group commit uses the spool's public interface only.
- One composition root: the stages of `inbound serve` are constructed in `inbound/app.py` and
  the builders it calls (`inbound/stages.py`) only.
- Only the command line (`inbound/cli/`: `serve`, `ses consume`) installs signal handlers.
- The dispatcher does not import the receiving side.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "inbound"
SOURCES = sorted(PACKAGE.rglob("*.py"))
SPOOL = PACKAGE / "spool"


def relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def offending(pattern: str, *, allowed: tuple[Path, ...]) -> list[str]:
    """`file:line: text` of every source line outside `allowed` that `pattern` matches."""
    found = []
    for path in SOURCES:
        if any(path == a or a in path.parents for a in allowed):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{relative(path)}:{number}: {line.strip()}")
    return found


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 50
    assert PACKAGE / "dispatch.py" in SOURCES


@pytest.mark.parametrize(
    "pattern",
    [
        r"message\.eml|meta\.json|state\.json",
        # The layout: its directories as path pieces, and the spool's path accessors.
        r"""["'](?:tmp|queue|dead)/|/ *["'](?:tmp|queue|dead)["']""",
        r"\bmessage_path\b|\.root\b.*spool|spool\.root",
    ],
    ids=["file-names", "directories", "paths"],
)
def test_only_the_spool_knows_its_layout(pattern: str) -> None:
    assert offending(pattern, allowed=(SPOOL,)) == []


def test_the_group_commit_uses_the_spools_public_interface() -> None:
    """No `other._name` in the group committer: nothing private of a writer or of the spool."""
    (path,) = [p for p in SOURCES if "class GroupCommitter" in p.read_text()]
    assert SPOOL in path.parents
    text = path.read_text()
    tree = ast.parse(text)
    (committer,) = [n for n in tree.body if getattr(n, "name", "") == "GroupCommitter"]
    private = [
        f"{relative(path)}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(committer)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert private == []


STAGES = ("Spool", "GroupCommitter", "Intake", "SmtpServer", "Dispatcher", "Scanners")


def constructed(path: Path) -> set[str]:
    """The stage classes `path` calls by name."""
    calls = set()
    for node in ast.walk(ast.parse(path.read_text())):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Name) and func.id in STAGES:
            calls.add(func.id)
    return calls


def test_the_stages_of_serve_are_built_in_one_place() -> None:
    builders = {relative(path): sorted(found) for path in SOURCES if (found := constructed(path))}
    assert builders == {
        "inbound/app.py": sorted(set(STAGES) - {"Scanners"}),
        # The builders `inbound.app.build` calls, one per stage that needs more than a call.
        "inbound/stages.py": ["Scanners"],
        # `inbound spool list|show|retry|delete|purge` opens the spool, nothing else ...
        "inbound/cli/spool.py": ["Spool"],
        # ... and so does `inbound spool drain`, to hand its messages to S3 + SQS.
        "inbound/cli/drain.py": ["Spool"],
    }


def test_only_the_command_line_installs_signal_handlers() -> None:
    pattern = r"add_signal_handler|signal\.signal\("
    assert offending(pattern, allowed=(PACKAGE / "cli",)) == []


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_dispatcher_does_not_import_the_receiving_side() -> None:
    receiving = ("inbound.intake", "inbound.receive", "inbound.app", "inbound.running")
    modules = imported(PACKAGE / "dispatch.py")
    assert "inbound.core.clock" in modules
    assert sorted(m for m in modules if m.startswith(receiving)) == []
