"""The internal action that relays a bounce to the sender a forward's SRS address encodes.

A forward rewrites the envelope sender to `SRS0=...@srs_domain` (SPEC section 3b), so the
DSNs of the next hops come back to inbound. The receiver accepts such a recipient only when its
hash and age verify (`inbound.intake`); the compiled rule set gives it an internal rule, whose
one action is this one (`inbound.rules.compiled`). Evaluation hands it out as a step like any
other, so the ledger records it and a retry never relays the bounce twice.

It runs only for addresses inbound signed: each recipient is verified again here, with the
keys of `INBOUND_SRS_SECRETS` and the time the message was received (so a retry hours later
still relays what was valid on arrival), and the message goes to the decoded addresses with
`MAIL FROM:<>` through the outbound service (`--relay`, or the local outbox). It is in no YAML:
`ACTION_TYPES` does not list it, and it has no SES mapping.
"""

from __future__ import annotations

import os
from datetime import UTC
from typing import ClassVar, Literal

from inbound.actions.base import ActionContext, ActionModel
from inbound.core.errors import InputError, PermanentActionError
from inbound.core.services import OutboundMail, Services
from inbound.core.steps import Outcome
from inbound.srs import SECRETS_ENV, SrsError, SrsKeys, srs_reverse

# Its send's index among a message's outbound sends (the outbox's `N.eml`), numbered as a
# forward numbers its destinations, by step position: the internal rule's is no file rule's.
SENDS_PER_RULE = 100 * 1000


class SrsRelayAction(ActionModel):
    receipt_type = "SrsRelay"
    receipt_fields: ClassVar[dict[str, str]] = {}
    delivers = True

    type: Literal["srs_relay"] = "srs_relay"

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        try:
            keys = SrsKeys.from_env(os.environ)
        except InputError as exc:
            raise PermanentActionError(str(exc)) from None
        if keys is None:
            raise PermanentActionError(f"{SECRETS_ENV} is not set: no SRS address can verify")
        received = ctx.received_at
        if received.tzinfo is None:  # the spool's and SES's times are UTC
            received = received.replace(tzinfo=UTC)
        destinations: list[str] = []
        for address in ctx.recipients:
            try:
                original = srs_reverse(address, keys, received)
            except SrsError as exc:
                # Accepted at RCPT, so the keys changed since: never relay what does not verify.
                raise PermanentActionError(
                    f"{address}: {type(exc).__name__}: {exc}; not relayed"
                ) from None
            if original.lower() not in (d.lower() for d in destinations):
                destinations.append(original)
        # RFC 3464 §2 / RFC 5321 §4.5.5: a bounce goes on with the null reverse path.
        index = ctx.step.rule * SENDS_PER_RULE
        mail = OutboundMail("", tuple(destinations), ctx.content, ctx.message_id, index)
        await services.outbound.send(mail)
        return Outcome(detail=f"relayed to {', '.join(destinations)}")
