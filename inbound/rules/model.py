"""The rule set model (SPEC section 1): what a valid rule file says, checked field by field.

Models are strict at the YAML boundary: unknown keys, wrong types and YAML 1.1 surprises are
errors. Cross-field checks that need the whole set (duplicate names) live in `load.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from inbound.actions import ACTION_TYPES, Action, ActionModel, action_union
from inbound.config.fields import Cidr, Domain, Name, check_domain
from inbound.core.verdicts import DmarcPolicy, Verdict


def _as_list(value: object) -> object:
    # "A list means any of": a single value is a list of one.
    return value if isinstance(value, list) else [value]


def _check_pattern(value: str) -> str:
    if value.startswith("re:"):
        try:
            re.compile(value[3:])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value[3:]!r}: {exc}") from None
    elif not value:
        raise ValueError("a pattern cannot be empty")
    return value


def _check_recipient(value: str) -> str:
    value = _check_pattern(value)
    if value.startswith("re:") or "*" in value or "?" in value:
        return value
    if value.count("@") > 1 or value.endswith("@") or value.startswith("@"):
        raise ValueError(f"{value!r} is not an address, a domain or a .subdomain pattern")
    if "@" not in value:
        check_domain(value.removeprefix("."))
    return value


Pattern = Annotated[str, AfterValidator(_check_pattern)]
# Enums read from YAML strings; strict mode would only take enum instances.
VerdictList = Annotated[list[Annotated[Verdict, Field(strict=False)]], BeforeValidator(_as_list)]
DmarcPolicies = Annotated[
    list[Annotated[DmarcPolicy, Field(strict=False)]], BeforeValidator(_as_list)
]
RecipientPattern = Annotated[str, AfterValidator(_check_recipient)]
Patterns = Annotated[list[Pattern], BeforeValidator(_as_list), Field(min_length=1)]
RecipientPatterns = Annotated[
    list[RecipientPattern], BeforeValidator(_as_list), Field(min_length=1)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class SizeRange(_Strict):
    min: Annotated[int, Field(ge=0)] | None = None
    max: Annotated[int, Field(ge=0)] | None = None


class AttachmentMatch(_Strict):
    filename: Pattern | None = None
    content_type: Pattern | None = None


class Conditions(_Strict):
    """`when` (every key holds) and `unless` (no key holds), SPEC section 4. Each field has its
    row in `inbound.rules.condition_table.CONDITIONS` (a unit test holds them together)."""

    sender: RecipientPatterns | None = None
    from_: Annotated[RecipientPatterns | None, Field(alias="from")] = None
    subject: Patterns | None = None
    header: dict[Annotated[str, Field(pattern=r"^[!-9;-~]+$")], Patterns] | None = None
    size: SizeRange | None = None
    client_ip: Annotated[list[Cidr], BeforeValidator(_as_list)] | None = None
    tls: bool | None = None
    spam: VerdictList | None = None
    virus: VerdictList | None = None
    spf: VerdictList | None = None
    dkim: VerdictList | None = None
    dmarc: VerdictList | None = None
    dmarc_policy: DmarcPolicies | None = None
    attachment: AttachmentMatch | None = None

    def set_conditions(self) -> dict[str, object]:
        """The condition keys that are set, in YAML spelling and field order, with their values
        (each compiled by its row of `inbound.rules.condition_table`)."""
        return {
            (info.alias or name): value
            for name, info in type(self).model_fields.items()
            if (value := getattr(self, name)) is not None
        }

    def used(self) -> list[str]:
        """The condition keys that are set, in YAML spelling."""
        return list(self.set_conditions())


class Rule(_Strict):
    name: Name
    enabled: bool = True
    recipients: list[RecipientPattern] = []
    tls_policy: Literal["optional", "require"] = "optional"
    scan_enabled: bool = False
    when: Conditions | None = None
    unless: Conditions | None = None
    actions: list[Action] = []

    @property
    def uses_extensions(self) -> bool:
        return (
            self.when is not None
            or self.unless is not None
            or any(r.startswith("re:") or "*" in r or "?" in r for r in self.recipients)
        )


class Filter(_Strict):
    name: Name
    policy: Literal["allow", "block"]
    cidr: Cidr


def _once_each(domains: list[str]) -> list[str]:
    """A domain named twice (`Example.com` and `example.com.`, or a file's and `--domain`'s)
    is one domain: kept once, where it came first (the load warns for the file's own)."""
    return list(dict.fromkeys(domains))


class RuleSet(_Strict):
    version: Literal[1] = 1
    name: Name
    domains: Annotated[list[Domain], Field(min_length=1), AfterValidator(_once_each)]
    filters: list[Filter] = []
    rules: list[Rule] = []


def use_actions(types: tuple[type[ActionModel], ...]) -> tuple[type[ActionModel], ...]:
    """Validate `actions:` with `types` from now on; give back the types used so far.

    Production uses `inbound.actions.ACTION_TYPES` as imported; this is for an action defined
    outside the package (a test's, a plug-in's): `use_actions((*ACTION_TYPES, MyAction))`.
    pydantic keeps a model's field types once built, so the field is replaced and the models
    that contain it are built again."""
    previous = _action_types[0]
    Rule.model_fields["actions"] = FieldInfo.from_annotated_attribute(
        list[action_union(types)],  # type: ignore[misc, arg-type]
        [],
    )
    Rule.model_rebuild(force=True)
    RuleSet.model_rebuild(force=True)
    _action_types[0] = types
    return previous


_action_types: list[tuple[type[ActionModel], ...]] = [ACTION_TYPES]
