"""The SES shape of a rule set (`describe-receipt-rule-set` JSON) translated to native data.

SES spells fields in PascalCase and nests actions as {"S3Action": {...}}; we translate them to
the YAML shape and carry each value's position along, so one validator reports errors for both.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from inbound.actions import ACTION_TYPES
from inbound.config.yamlsource import Path_, SourceMap
from inbound.core.errors import ConfigIssue

_RULE_FIELDS = {
    "Name": "name",
    "Enabled": "enabled",
    "TlsPolicy": "tls_policy",
    "ScanEnabled": "scan_enabled",
    "Recipients": "recipients",
    "Actions": "actions",
}
_TLS = {"Optional": "optional", "Require": "require"}
_POLICY = {"Allow": "allow", "Block": "block"}
_BY_SES_KEY = {action.ses.key: action for action in ACTION_TYPES if action.ses is not None}


class _Translator:
    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.target = SourceMap(source.file)
        self.issues: list[ConfigIssue] = []

    def place(self, ses_path: Path_, native_path: Path_) -> None:
        self.target.values[native_path] = self.source.value_at(ses_path)
        self.target.keys[native_path] = self.source.key_at(ses_path)
        self.target.aliases[native_path] = ses_path

    def unknown(self, ses_path: Path_, key: str, known: list[str]) -> None:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.issues.append(
            self.source.issue((*ses_path, key), f"unknown key {key!r}{hint}", at_key=True)
        )

    def enum(self, value: object, spellings: dict[str, str], ses_path: Path_) -> object:
        """An SES enum value in our spelling; an unknown one is reported in SES spelling."""
        if isinstance(value, str) and value in spellings:
            return spellings[value]
        choices = " or ".join(repr(s) for s in spellings)
        self.issues.append(self.source.issue(ses_path, f"must be {choices}, not {value!r}"))
        return value

    def mapping(self, value: object, ses_path: Path_) -> dict[str, object]:
        if isinstance(value, dict):
            return value
        self.issues.append(self.source.issue(ses_path, "must be a mapping"))
        return {}

    def fields(
        self, body: dict[str, object], names: Mapping[str, str], ses_path: Path_, native_path: Path_
    ) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in body.items():
            if key not in names:
                self.unknown(ses_path, key, list(names))
                continue
            out[names[key]] = value
            self.place((*ses_path, key), (*native_path, names[key]))
        return out

    def rule(self, value: object, ses_path: Path_, native_path: Path_) -> dict[str, object]:
        self.place(ses_path, native_path)
        for ses_name, field in _RULE_FIELDS.items():
            self.target.aliases[(*native_path, field)] = (*ses_path, ses_name)
        rule = self.fields(self.mapping(value, ses_path), _RULE_FIELDS, ses_path, native_path)
        # The SES API defaults Enabled to false (unlike the console and our YAML).
        rule.setdefault("enabled", False)
        if "tls_policy" in rule:
            rule["tls_policy"] = self.enum(rule["tls_policy"], _TLS, (*ses_path, "TlsPolicy"))
        actions = rule.get("actions")
        if isinstance(actions, list):
            rule["actions"] = [
                self.action(a, (*ses_path, "Actions", j), (*native_path, "actions", j))
                for j, a in enumerate(actions)
            ]
        return rule

    def action(self, value: object, ses_path: Path_, native_path: Path_) -> dict[str, object]:
        self.place(ses_path, native_path)
        wrapper = self.mapping(value, ses_path)
        if len(wrapper) != 1:
            message = f"an action has exactly one of {', '.join(_BY_SES_KEY)}"
            self.issues.append(self.source.issue(ses_path, message))
            return {}
        [(key, body)] = wrapper.items()
        model = _BY_SES_KEY.get(key)
        if model is None or model.ses is None:
            self.unknown(ses_path, key, list(_BY_SES_KEY))
            return {}
        ses = model.ses
        body_path = (*ses_path, key)
        body = dict(self.mapping(body, body_path))
        for constant in ses.constants:
            body.pop(constant, None)
        out: dict[str, object] = {"type": model.yaml_type()}
        self.place(body_path, (*native_path, "type"))
        for ses_name, field in ses.fields.items():
            self.target.aliases[(*native_path, field)] = (*body_path, ses_name)
        fields = self.fields(body, ses.fields, body_path, native_path)
        ses_names = {field: ses_name for ses_name, field in ses.fields.items()}
        for field, given in fields.items():
            if field in ses.values:
                spellings = {ses: ours for ours, ses in ses.values[field].items()}
                out[field] = self.enum(given, spellings, (*body_path, ses_names[field]))
            else:
                out[field] = given
        return out

    def filter(self, value: object, ses_path: Path_, native_path: Path_) -> dict[str, object]:
        body = self.mapping(value, ses_path)
        out = self.fields(
            {k: v for k, v in body.items() if k != "IpFilter"},
            {"Name": "name"},
            ses_path,
            native_path,
        )
        ip = self.mapping(body.get("IpFilter", {}), (*ses_path, "IpFilter"))
        ip_path = (*ses_path, "IpFilter")
        out.update(self.fields(ip, {"Policy": "policy", "Cidr": "cidr"}, ip_path, native_path))
        if "policy" in out:
            out["policy"] = self.enum(out["policy"], _POLICY, (*ip_path, "Policy"))
        return out


def to_native(
    data: object, source: SourceMap, *, stem: str
) -> tuple[dict[str, object], SourceMap, list[ConfigIssue]]:
    """Translate SES JSON (`Metadata`, `Rules`, optional `Filters`) to native rule-set data.

    Returns the problems found on the way (unknown keys) beside the data, so validation can
    go on and report the rest of the file too.
    """
    t = _Translator(source)
    top = t.mapping(data, ())
    known = ["Metadata", "Rules", "Filters", "ResponseMetadata"]
    for key in top:
        if key not in known:
            t.unknown((), key, known)
    metadata = t.mapping(top.get("Metadata", {}), ("Metadata",))
    native: dict[str, object] = {"version": 1, "name": metadata.get("Name", stem)}
    t.place(("Metadata", "Name"), ("name",))
    rules = top.get("Rules", [])
    if isinstance(rules, list):
        native["rules"] = [t.rule(r, ("Rules", i), ("rules", i)) for i, r in enumerate(rules)]
    else:
        t.issues.append(source.issue(("Rules",), "must be a list"))
    filters = top.get("Filters", [])
    if isinstance(filters, list):
        native["filters"] = [
            t.filter(f, ("Filters", i), ("filters", i)) for i, f in enumerate(filters)
        ]
    t.place((), ())
    return native, t.target, t.issues


def derive_domains(data: dict[str, object]) -> list[str]:
    """Receiving domains implied by the rules' recipients (SES: the verified domains)."""
    domains: list[str] = []
    rules = data.get("rules")
    for rule in rules if isinstance(rules, list) else []:
        recipients = rule.get("recipients") if isinstance(rule, dict) else None
        for pattern in recipients if isinstance(recipients, list) else []:
            if not isinstance(pattern, str) or pattern.startswith("re:") or "*" in pattern:
                continue
            domain = pattern.rpartition("@")[2].lower().lstrip(".")
            if domain and domain not in domains:
                domains.append(domain)
    return domains
