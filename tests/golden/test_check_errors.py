"""Golden tests of `inbound check` output for invalid rule files (next to their inputs).

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/golden`, then read the
diff: the output is what users see.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inbound.cli.main import main

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
INPUTS = sorted(p for p in (HERE / "errors").iterdir() if p.suffix in (".yaml", ".json"))


def render(code: int, out: str, err: str) -> str:
    return f"exit: {code}\n--- stdout\n{out}--- stderr\n{err}"


@pytest.mark.parametrize("path", INPUTS, ids=[p.name for p in INPUTS])
def test_check_output(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code = main(["check", str(path.relative_to(ROOT))])
    out, err = capsys.readouterr()
    actual = render(code, out, err)
    golden = path.with_suffix(path.suffix + ".expected")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(actual, encoding="utf-8")
    assert golden.exists(), f"missing {golden.name}: run with UPDATE_GOLDEN=1"
    assert actual == golden.read_text(encoding="utf-8")
    assert "Traceback" not in err
