"""The pure parts of a forward's plan (SPEC section 3b): its destinations and its From mode.

`expand_destinations` makes the destinations of a rule's `to` from the recipients it matched
(with the groups of the `re:` recipient pattern that matched each), `choose_mode` decides what
`when_dmarc` means for one message. Both are shared by the executor (`inbound.actions.forward`)
and by `inbound evaluate`/`test`, so what they show is what is sent. No I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.match import compile_scanned, split_address

Mode = Literal["rewrite", "preserve"]
# A group of the `re:` recipient pattern in a destination: \1 .. \99, \g<name>, \g<1>.
GROUP_REFERENCE = re.compile(r"\\(?:g<([^<>]*)>|([0-9]{1,2}))")


@dataclass(frozen=True, slots=True)
class ForwardTo:
    """One destination and the recipient it was made from (X-Original-To, the From's DOMAIN)."""

    address: str
    recipient: str


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    """What a forward does with one message: `inbound evaluate` shows it, the executor sends it."""

    destinations: tuple[ForwardTo, ...]
    mode: Mode
    why: str  # why this From mode
    envelope_sender: str
    # Why nothing is forwarded (a loop), else None.
    not_forwarded: str | None = None


def has_group(regex: re.Pattern[str], group: str) -> bool:
    if group.isdigit():
        return 0 < int(group) <= regex.groups
    return group in regex.groupindex


def expand_destinations(
    templates: Sequence[str], recipients: Sequence[str], patterns: Sequence[str]
) -> Iterable[ForwardTo]:
    """Each destination once, in order: for each recipient, each template with the groups of
    the first `re:` pattern that matched it (Mailgun's `forward("\\1@...")`)."""
    regexes = [compile_scanned(p) for p in patterns if p.startswith("re:")]
    seen: set[str] = set()
    for recipient in recipients:
        parts = split_address(recipient)
        full = f"{parts[0]}@{parts[1]}" if parts else recipient.lower()
        match = next((m for r in regexes if (m := r.fullmatch(full)) is not None), None)
        for template in templates:
            if GROUP_REFERENCE.search(template):
                if match is None:
                    continue  # matched by a plain pattern: no groups (load refuses this)
                address = match.expand(template)
            else:
                address = template
            if "@" not in address or address.startswith("@") or address.endswith("@"):
                continue  # an optional group that did not take part
            if address.lower() not in seen:
                seen.add(address.lower())
                yield ForwardTo(address, recipient)


def choose_mode(
    configured: str, verdicts: Verdicts, published: DmarcPolicy | None
) -> tuple[Mode, str]:
    """The From mode for this message, and why (SPEC 3b `when_dmarc`)."""
    if configured == "rewrite":
        return "rewrite", "from_mode: rewrite"
    if configured == "preserve":
        return "preserve", "from_mode: preserve"
    policy = published or verdicts.dmarc_policy
    if verdicts.dkim is Verdict.PASS:
        # The verdict counts only signatures aligned with From (inbound.scan.auth): that
        # signature survives an untouched forward, and DMARC passes on it at the next hop.
        return "preserve", "when_dmarc: an aligned DKIM signature passed"
    if policy in (DmarcPolicy.QUARANTINE, DmarcPolicy.REJECT):
        return "rewrite", f"when_dmarc: p={policy.value} and no aligned DKIM signature passed"
    if policy is None and verdicts.dmarc is Verdict.PROCESSING_FAILED:
        # The policy could not be read: a p=reject sender would bounce at the destination.
        return "rewrite", "when_dmarc: DMARC policy unknown (temporary error), no aligned DKIM"
    shown = policy.value if policy is not None else "none published"
    return "preserve", f"when_dmarc: DMARC policy {shown}"
