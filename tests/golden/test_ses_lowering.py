"""Golden tests of what `inbound ses export --lower-extensions` and `inbound check --ses` print
for rule files with extensions (inputs and outputs in ses/, next to each other).

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/golden`, then read the
diff: the output is what users deploy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inbound.cli.main import main

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SES = HERE / "ses"
INPUTS = sorted(SES.glob("*.yaml"))
SHARED = "arn:aws:lambda:us-east-1:123456789012:function:inbound-guard"
PER_RULE = "arn:aws:lambda:us-east-1:123456789012:function:inbound-guard:{rule}"

COMMANDS = {
    "check-ses": ["check", "--ses"],
    "export-shared-guard": ["ses", "export", "--lower-extensions", SHARED],
    "export-guard-per-rule": ["ses", "export", "--lower-extensions", PER_RULE],
    "export-no-guard": ["ses", "export"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path", INPUTS, ids=[p.stem for p in INPUTS])
def test_output(
    path: Path,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    code = main([*COMMANDS[command], str(path.relative_to(ROOT))])
    out, err = capsys.readouterr()
    actual = f"exit: {code}\n--- stdout\n{out}--- stderr\n{err}"
    golden = SES / f"{path.stem}.{command}.expected"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(actual, encoding="utf-8")
    assert golden.exists(), f"missing {golden.name}: run with UPDATE_GOLDEN=1"
    assert actual == golden.read_text(encoding="utf-8")
    assert "Traceback" not in err
