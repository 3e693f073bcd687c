"""The live SES receipt rule set: import it as YAML, plan the changes to match a YAML, apply them.

boto3's `ses` client is configured only by the standard AWS environment. Every call goes
through `Throttled` (SES: at most one receipt-rule call per second). Filters are account-wide:
they are managed only when the YAML declares some, so a YAML without filters leaves them alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
from botocore.parsers import ResponseParserError

from inbound.core.errors import InboundError
from inbound.rules.load import parse_rule_set
from inbound.rules.model import Rule, RuleSet
from inbound.ses.export import Guard, export_filter, export_rule
from inbound.targets.aws import NO_REGION, aws_session

DEFAULT_RATE = 1.0  # calls per second (the SES receipt API quota)


class SesError(InboundError):
    """A call to SES failed (the message names the operation and SES's error)."""


def ses_client() -> Any:
    try:
        return aws_session().client("ses")
    except NoRegionError:
        raise SesError(NO_REGION) from None


class Throttled:
    """An `ses` client whose calls are at most `rate` per second."""

    def __init__(
        self, client: Any, rate: float = DEFAULT_RATE, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.client = client
        self.interval = 1.0 / rate
        self.sleep = sleep
        self.last: float | None = None

    def call(self, operation: str, **kwargs: object) -> dict[str, Any]:
        try:
            return self.call_raw(operation, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise SesError(f"{operation}: {error.get('Code')}: {error.get('Message')}") from None
        # no credentials, no connection, or an answer that is not SES's (an HTML error page)
        except (BotoCoreError, ResponseParserError) as exc:
            raise SesError(f"{operation}: {exc}") from None

    def error_code(self, operation: str, **kwargs: object) -> tuple[dict[str, Any], str | None]:
        """Like `call`, but a ClientError gives its code instead of raising."""
        try:
            return self.call_raw(operation, **kwargs), None
        except ClientError as exc:
            return {}, str(exc.response.get("Error", {}).get("Code"))
        except (BotoCoreError, ResponseParserError) as exc:
            raise SesError(f"{operation}: {exc}") from None

    def call_raw(self, operation: str, **kwargs: object) -> dict[str, Any]:
        if self.last is not None:
            wait = self.last + self.interval - time.monotonic()
            if wait > 0:
                self.sleep(wait)
        try:
            result: dict[str, Any] = getattr(self.client, operation)(**kwargs)
            return result
        finally:
            self.last = time.monotonic()


# -- reading the live set -------------------------------------------------------------------


def describe(ses: Throttled, name: str | None) -> dict[str, Any] | None:
    """`{"Metadata", "Rules"}` of the named set (None: it does not exist), or of the active one."""
    if name is None:
        found = ses.call("describe_active_receipt_rule_set")
        return found if found.get("Metadata") else None
    found, code = ses.error_code("describe_receipt_rule_set", RuleSetName=name)
    if code == "RuleSetDoesNotExist":
        return None
    if code is not None:
        raise SesError(f"describe_receipt_rule_set: {code}")
    return found


def list_filters(ses: Throttled) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = ses.call("list_receipt_filters").get("Filters", [])
    return filters


def live_rule_set(
    described: dict[str, Any], *, filters: list[dict[str, Any]] | None = None, domains: list[str]
) -> RuleSet:
    """The live set as our model, through the SES JSON reader (`inbound.rules.ses_json`)."""
    metadata = described.get("Metadata", {})
    data: dict[str, object] = {
        "Metadata": {"Name": metadata.get("Name")},
        "Rules": described.get("Rules", []),
    }
    if filters:
        data["Filters"] = filters
    name = str(metadata.get("Name"))
    return parse_rule_set(json.dumps(data), f"ses:{name}.json", extra_domains=domains).rule_set


def dump_yaml(rule_set: RuleSet) -> str:
    """The rule set as YAML: defaults left out, keys in the order SPEC section 1 shows."""
    data: dict[str, object] = {
        "version": rule_set.version,
        "name": rule_set.name,
        "domains": list(rule_set.domains),
    }
    if rule_set.filters:
        data["filters"] = [
            {"name": f.name, "policy": f.policy, "cidr": str(f.cidr)} for f in rule_set.filters
        ]
    data["rules"] = [
        rule.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        | {"actions": [a.model_dump(mode="json", exclude_none=True) for a in rule.actions]}
        for rule in rule_set.rules
    ]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def import_yaml(
    ses: Throttled,
    name: str | None,
    *,
    with_filters: bool = True,
    domains: list[str] | None = None,
) -> str:
    """The YAML of the named (or, with None, the active) live rule set."""
    described = describe(ses, name)
    if described is None:
        raise SesError(f"rule set {name!r} does not exist" if name else "no rule set is active")
    filters = list_filters(ses) if with_filters else None
    return dump_yaml(live_rule_set(described, filters=filters, domains=domains or []))


# -- planning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One change to the live set and the API call that makes it."""

    summary: str
    operation: str
    request: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.summary


def _rules_by_name(rules: list[Rule], guard: Guard | None = None) -> dict[str, dict[str, object]]:
    return {rule.name: export_rule(rule, guard) for rule in rules}


def plan_changes(
    desired: RuleSet,
    live: RuleSet | None,
    *,
    rule_set_name: str,
    active: str | None,
    live_filters: list[dict[str, Any]] | None = None,
    guard: Guard | None = None,
) -> list[Change]:
    """The calls that make the live set (None: missing) equal to `desired` (its conditions
    lowered to `guard`), in order. The live set is compared as SES holds it."""
    changes: list[Change] = []
    name = rule_set_name
    if live is None:
        changes.append(
            Change(f"create rule set {name}", "create_receipt_rule_set", {"RuleSetName": name})
        )
    live_rules = _rules_by_name(live.rules if live else [])
    wanted = _rules_by_name(desired.rules, guard)
    order = [r for r in live_rules if r in wanted]
    for rule_name in live_rules:
        if rule_name not in wanted:
            request: dict[str, object] = {"RuleSetName": name, "RuleName": rule_name}
            changes.append(Change(f"delete rule {rule_name}", "delete_receipt_rule", request))
    previous: str | None = None
    for rule_name, rule in wanted.items():
        if rule_name not in live_rules:
            request = {"RuleSetName": name, "Rule": rule}
            where = "at the beginning"
            if previous is not None:
                request["After"] = previous
                where = f"after {previous}"
            changes.append(
                Change(f"create rule {rule_name} {where}", "create_receipt_rule", request)
            )
            order.insert(order.index(previous) + 1 if previous is not None else 0, rule_name)
        elif live_rules[rule_name] != rule:
            changed = [k for k in rule if rule[k] != live_rules[rule_name].get(k)]
            request = {"RuleSetName": name, "Rule": rule}
            summary = f"update rule {rule_name} ({', '.join(changed)})"
            changes.append(Change(summary, "update_receipt_rule", request))
        previous = rule_name
    if order != list(wanted):
        request = {"RuleSetName": name, "RuleNames": list(wanted)}
        summary = f"reorder rules: {', '.join(wanted)}"
        changes.append(Change(summary, "reorder_receipt_rule_set", request))
    if desired.filters and live_filters is not None:
        changes += _filter_changes(desired, live_filters)
    if active != name:
        changes.append(
            Change(
                f"activate rule set {name}", "set_active_receipt_rule_set", {"RuleSetName": name}
            )
        )
    return changes


def _filter_changes(desired: RuleSet, live_filters: list[dict[str, Any]]) -> list[Change]:
    changes: list[Change] = []
    wanted = {f.name: export_filter(f) for f in desired.filters}
    live = {str(f.get("Name")): f for f in live_filters}
    for filter_name, item in live.items():
        if wanted.get(filter_name) != item:
            summary = f"delete filter {filter_name}"
            changes.append(Change(summary, "delete_receipt_filter", {"FilterName": filter_name}))
    for filter_name, item in wanted.items():
        if live.get(filter_name) != item:
            ip = item["IpFilter"]
            assert isinstance(ip, dict)
            summary = f"create filter {filter_name} ({ip['Policy']} {ip['Cidr']})"
            changes.append(Change(summary, "create_receipt_filter", {"Filter": item}))
    return changes


def plan(
    ses: Throttled,
    desired: RuleSet,
    rule_set_name: str | None = None,
    guard: Guard | None = None,
) -> list[Change]:
    """Read the live state and plan the changes to `desired`."""
    name = rule_set_name or desired.name
    described = describe(ses, name)
    live = None
    if described is not None:
        live = live_rule_set(described, domains=list(desired.domains))
    active_set = describe(ses, None)
    active = str(active_set["Metadata"]["Name"]) if active_set else None
    live_filters = list_filters(ses) if desired.filters else None
    return plan_changes(
        desired, live, rule_set_name=name, active=active, live_filters=live_filters, guard=guard
    )


def apply(ses: Throttled, changes: list[Change]) -> None:
    """Make the changes, in order (each call throttled)."""
    for change in changes:
        ses.call(change.operation, **change.request)
