"""An action defined here, outside the package, registered in one line, runs through every
entry point (the runner with the memory services, `inbound serve`'s dispatcher, the SES Lambda
handler) and is refused by `ses export` and flagged by `check --ses` by name: it has no SES
mapping."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from inbound.actions import ACTION_TYPES, ActionContext, ActionModel
from inbound.cli.main import main
from inbound.core.services import Services
from inbound.core.steps import Outcome
from inbound.rules.model import use_actions
from inbound.run.ledgers import MemoryLedger
from inbound.run.runner import run_message
from inbound.ses.handler import lambda_handler
from inbound.targets.memory import MemoryServices
from tests.integration.receiver import in_process, settings_for, wait_for
from tests.integration.test_ses_handler import (
    RAW,
    bucket,
    get,
    rules,
    ses_event,
    stored_message,
    unique,
)
from tests.unit.run.helpers import compiled, subject, walk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class EchoAction(ActionModel):
    """Keeps a copy of the message under `echo/` in a bucket, and says so."""

    receipt_type = "Echo"
    receipt_fields: ClassVar[dict[str, str]] = {"bucket": "bucket"}
    delivers = True

    type: Literal["echo"]
    bucket: str

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        key = f"echo/{ctx.message_id}"
        await services.blobs.store(
            self.bucket, key, ctx.content, kms_key_arn=None, iam_role_arn=None
        )
        return Outcome(detail=f"echoed to {self.bucket}")


@pytest.fixture
def echo() -> Iterator[None]:
    previous = use_actions((*ACTION_TYPES, EchoAction))  # the one line that registers it
    yield
    use_actions(previous)


def echo_rules(out: str) -> str:
    return f"""\
  - name: copy
    actions:
      - {{type: echo, bucket: {out}}}
"""


def rule_file(tmp_path: Path, out: str = "mail") -> Path:
    path = tmp_path / "rules.yaml"
    text = echo_rules(out)
    path.write_text(f"version: 1\nname: test\ndomains: [example.com]\nrules:\n{text}")
    return path


def test_runs_with_the_memory_services(echo: None) -> None:
    fakes = MemoryServices()
    ledger = MemoryLedger()
    run = run_message(walk(compiled(echo_rules("mail"))), subject(), fakes.services, ledger)
    result = asyncio.run(run)
    assert result.failed is None
    assert list(fakes.blobs.objects) == [("mail", "echo/m1")]
    assert [r.result for r in ledger.records.values()] == ["echoed to mail"]
    assert result.plan.rules[0].actions[0].receipt == {"type": "Echo", "bucket": "mail"}


def test_runs_in_serve(echo: None, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rule_file(tmp_path).read_text())
    with in_process(settings) as running:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.sendmail("a@sender.test", ["user@example.com"], b"Subject: hi\r\n\r\nhi\r\n")
        folder = running.data_dir / "s3" / "mail" / "echo"
        copies = wait_for(lambda: list(folder.glob("[!.]*")) if folder.is_dir() else [], "the echo")
        running.wait_idle()
        assert running.queued() == []
    assert len(copies) == 1
    assert copies[0].read_bytes().endswith(b"Subject: hi\r\n\r\nhi\r\n")


def test_runs_in_the_lambda_handler(
    echo: None, aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = unique("echo")
    source = stored_message(message_id)
    monkeypatch.setenv("INBOUND_SES_BUCKET", source)
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket()
    rules(tmp_path, monkeypatch, rule_file(tmp_path, out).read_text())
    assert lambda_handler(ses_event(message_id), None) == {"disposition": "CONTINUE"}
    assert get(out, f"echo/{message_id}") == RAW


def test_ses_export_refuses_it_by_rule_and_action(
    echo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rule_file(tmp_path)
    assert main(["ses", "export", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "rule 'copy': action 1 (echo) has no SES equivalent: it runs only in `inbound serve` "
        "or in the inbound Lambda handler (inbound.ses.handler), not in SES"
    ) in err


def test_check_ses_says_it_is_local_only(
    echo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rule_file(tmp_path)
    main(["check", "--ses", str(path)])
    out = capsys.readouterr().out
    assert f"{path}: ses: copy: local only (action 1 (echo) has no SES equivalent" in out


def test_unregistered_it_is_an_unknown_action_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(rule_file(tmp_path))]) == 2
    assert "unknown action type 'echo'" in capsys.readouterr().err
