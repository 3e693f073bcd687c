"""Recipient patterns compiled at load time into hash lookups (SPEC section 2, matching).

Addresses, domains and `.subdomain` patterns are dict keys, so finding the rules for a
recipient costs a few lookups whatever the number of rules; only globs and `re:` patterns are
scanned. Matching is case-insensitive throughout (a decision where SES is silent).
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

AddressPredicate = Callable[[str], bool]


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, domain) lower-cased, or None when the address has no domain."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.rstrip(".")


def local_forms(local: str) -> list[str]:
    """`a+x+y` -> `a+x`, `a`: the addresses whose +label forms this local part is."""
    forms: list[str] = []
    cut = local.rfind("+")
    while cut >= 0:
        if cut:  # "+x" is no +label form of an empty local part
            forms.append(local[:cut])
        cut = local.rfind("+", 0, cut)
    return forms


def parent_domains(domain: str) -> Iterable[str]:
    """`a.b.example.com` -> `b.example.com`, `example.com`, `com` (proper suffixes)."""
    rest = domain
    while "." in rest:
        rest = rest.partition(".")[2]
        yield rest


def is_scanned_pattern(pattern: str) -> bool:
    return pattern.startswith("re:") or "*" in pattern or "?" in pattern


def compile_scanned(pattern: str) -> re.Pattern[str]:
    """A glob (translated to match the whole value) or `re:PATTERN` as written. Callers match
    addresses whole (`fullmatch`); `subject` and `header` search a `re:` in the value."""
    if pattern.startswith("re:"):
        return re.compile(pattern[3:], re.IGNORECASE)
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


def address_predicate(pattern: str) -> AddressPredicate:
    """One recipient-form pattern as a predicate over an address (for `sender`, `from`)."""
    if is_scanned_pattern(pattern):
        regex = compile_scanned(pattern)
        return lambda address: regex.fullmatch(address) is not None
    wanted = pattern.lower()
    if "@" in wanted:
        return lambda address: _address_matches(wanted, address)
    if wanted.startswith("."):
        parent = wanted[1:]
        return lambda address: (
            (s := split_address(address)) is not None and s[1].endswith("." + parent)
        )
    return lambda address: (s := split_address(address)) is not None and s[1] == wanted


def _address_matches(pattern: str, address: str) -> bool:
    parts = split_address(address)
    if parts is None:
        return False
    local, domain = parts
    full = f"{local}@{domain}"
    return full == pattern or any(f"{form}@{domain}" == pattern for form in local_forms(local))


@dataclass(frozen=True, slots=True)
class RecipientIndex:
    """Which rules (by position) match a recipient address."""

    addresses: dict[str, tuple[int, ...]]
    domains: dict[str, tuple[int, ...]]
    subdomains: dict[str, tuple[int, ...]]
    catch_all: tuple[int, ...]
    scanned: tuple[tuple[re.Pattern[str], int], ...]

    @classmethod
    def build(cls, rules: Sequence[tuple[int, Sequence[str]]]) -> RecipientIndex:
        """`rules` are (position, recipient patterns) of the rules to index, in order."""
        addresses: dict[str, list[int]] = defaultdict(list)
        domains: dict[str, list[int]] = defaultdict(list)
        subdomains: dict[str, list[int]] = defaultdict(list)
        catch_all: list[int] = []
        scanned: list[tuple[re.Pattern[str], int]] = []
        for position, patterns in rules:
            if not patterns:
                catch_all.append(position)
            for pattern in patterns:
                key = pattern.lower()
                if is_scanned_pattern(pattern):
                    scanned.append((compile_scanned(pattern), position))
                elif "@" in key:
                    _add(addresses, key, position)
                elif key.startswith("."):
                    _add(subdomains, key[1:], position)
                else:
                    _add(domains, key, position)
        return cls(
            {k: tuple(v) for k, v in addresses.items()},
            {k: tuple(v) for k, v in domains.items()},
            {k: tuple(v) for k, v in subdomains.items()},
            tuple(catch_all),
            tuple(scanned),
        )

    def rules_for(self, address: str) -> tuple[int, ...]:
        """Positions of the rules matching `address`, ascending. The catch-all rules match
        every address; the caller has already refused domains that are not ours."""
        parts = split_address(address)
        if parts is None:
            return ()
        return self.rules_at(*parts)

    def rules_at(self, local: str, domain: str) -> tuple[int, ...]:
        """`rules_for` an address already split by `split_address`."""
        # Each bucket is ascending without repeats (built in rule order), so the usual answer,
        # one bucket, is returned as it is; only several are merged.
        full = f"{local}@{domain}"
        buckets: list[tuple[int, ...]] = []
        if self.catch_all:
            buckets.append(self.catch_all)
        if (hit := self.addresses.get(full)) is not None:
            buckets.append(hit)
        if "+" in local:
            for form in local_forms(local):
                if (hit := self.addresses.get(f"{form}@{domain}")) is not None:
                    buckets.append(hit)
        if (hit := self.domains.get(domain)) is not None:
            buckets.append(hit)
        if self.subdomains:  # `parent_domains`, inline: no generator to resume
            parent = domain
            while "." in parent:
                parent = parent.partition(".")[2]
                if (hit := self.subdomains.get(parent)) is not None:
                    buckets.append(hit)
        if self.scanned:
            # In rule order, a rule's patterns together: a rule found is not tested again.
            scanned: list[int] = []
            for regex, position in self.scanned:
                if (not scanned or scanned[-1] != position) and regex.fullmatch(full):
                    scanned.append(position)
            if scanned:
                buckets.append(tuple(scanned))
        if len(buckets) == 1:
            return buckets[0]
        if not buckets:
            return ()
        return tuple(sorted({position for bucket in buckets for position in bucket}))


def _add(table: dict[str, list[int]], key: str, position: int) -> None:
    bucket = table[key]
    if not bucket or bucket[-1] != position:
        bucket.append(position)


def within_domains(domain: str, domains: frozenset[str]) -> bool:
    """A domain is ours if it is in `domains` or a subdomain of one (SPEC section 2)."""
    # Inline, not through `parent_domains`: this runs for every recipient of every message.
    rest = domain
    while True:
        if rest in domains:
            return True
        if "." not in rest:
            return False
        rest = rest.partition(".")[2]
