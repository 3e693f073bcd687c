"""The rule test file format (SPEC section 6): cases with facts and expectations."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from inbound.config.fields import Domain
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts

_REPLY = re.compile(r"([2-5][0-9][0-9])(?: ([2-5]\.[0-9]{1,3}\.[0-9]{1,3}))?")


def _as_list(value: object) -> object:
    return value if isinstance(value, list) else [value]


def _reply_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_reply(value: str) -> str:
    if not _REPLY.fullmatch(value):
        raise ValueError(f"{value!r} is not a reply code like 550 or '550 5.7.1'")
    return value


ExpectedReply = Annotated[str, BeforeValidator(_reply_text), AfterValidator(_check_reply)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class VerdictInput(_Strict):
    """Verdicts a case (or `--verdict`) assumes; the rest default as SPEC section 6 says."""

    spam: Annotated[Verdict, Field(strict=False)] | None = None
    virus: Annotated[Verdict, Field(strict=False)] | None = None
    spf: Annotated[Verdict, Field(strict=False)] | None = None
    dkim: Annotated[Verdict, Field(strict=False)] | None = None
    dmarc: Annotated[Verdict, Field(strict=False)] | None = None
    dmarc_policy: Annotated[DmarcPolicy, Field(strict=False)] | None = None

    def to_verdicts(self, measured: Verdicts | None = None) -> Verdicts:
        """The given verdicts over `measured` ones (from `--scan`), else over the defaults:
        spam/virus count only when scanning is on (evaluate decides), the rest are GRAY."""
        base = measured or Verdicts(spam=Verdict.GRAY, virus=Verdict.GRAY)
        return Verdicts(
            spam=self.spam or base.spam,
            virus=self.virus or base.virus,
            spf=self.spf or base.spf,
            dkim=self.dkim or base.dkim,
            dmarc=self.dmarc or base.dmarc,
            dmarc_policy=self.dmarc_policy or base.dmarc_policy,
        )


class Expect(_Strict):
    """Every key is optional; each one given must hold."""

    outcome: Literal["accepted", "rejected"] | None = None
    # null: no recipient was accepted, so DATA was never answered.
    data_reply: ExpectedReply | None = None
    rules: list[str] | None = None
    not_rules: list[str] | None = None
    actions: list[str] | None = None
    recipients: dict[str, ExpectedReply] | None = None
    # The URLs of the webhook actions evaluation reached, in order, exactly.
    webhooks: list[str] | None = None
    # The destinations of every forward step reached, in order (SPEC 3b).
    forwards: list[str] | None = None


class Case(_Strict):
    name: Annotated[str, Field(min_length=1)]
    eml: Annotated[str, Field(min_length=1)]
    mail_from: str | None = None
    rcpt: Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)]
    client_ip: str = "127.0.0.1"
    helo: str = "localhost"
    tls: bool = False
    verdicts: VerdictInput = VerdictInput()
    lambda_: Annotated[dict[str, str], Field(alias="lambda")] = {}
    # Run the configured scanners (`inbound test --clamd/--spamd/--dns-zone`) on the message.
    scan: bool = False
    expect: Expect


class TestFile(_Strict):
    rules: Annotated[str, Field(min_length=1)]
    # Receiving domains to add, for SES JSON rule sets that have none.
    domains: list[Domain] = []
    cases: Annotated[list[Case], Field(min_length=1)]
