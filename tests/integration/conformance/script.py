"""The `.smtp` conformance script format: parsing a file into sessions, and matching replies.

One file holds many sessions; the format is described in README.md next to this module. This
module owns the grammar only (what a session says it sends and expects); playing a session
against a receiver is test_conformance.py's. A malformed file is a `ScriptError` naming
FILE:LINE, raised at collection, so a typo in a case never passes silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# What a case may ask of its receiver besides the defaults: `tls` (a self-signed certificate,
# STARTTLS offered) and any ReceiverLimits field, written with dashes.
LIMIT_SETTINGS = frozenset(
    {
        "max-message-size",
        "max-recipients",
        "max-line-length",
        "command-timeout",
        "data-timeout",
        "max-junk-commands",
        "max-session-time",
        "max-header-size",
    }
)
GREETING = "220 mx.test"

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_ESCAPES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}
_REPEAT = re.compile(r"\{\{(.+?)\*(\d+)\}\}")
_QUIET = re.compile(r"<quiet (\d+(?:\.\d+)?)>")
_PAUSE = re.compile(r"<pause (\d+(?:\.\d+)?)>")
# A reply line: three digits, then "-" (more lines follow) or a space or nothing (the last).
_CODE = re.compile(r"^\d{3}(-| |$)")


class ScriptError(ValueError):
    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class Send:
    data: bytes  # one write: every consecutive C: line of the script
    shown: str  # as the script wrote it, for the transcript


@dataclass(frozen=True)
class Expect:
    """One whole reply. Each line is a tuple of alternatives; a last line `NNN ...` stands
    for any further lines of the reply, the last of them with that code."""

    lines: tuple[tuple[str, ...], ...]

    def matches(self, reply: list[str]) -> bool:
        patterns = list(self.lines)
        rest = patterns[-1] if patterns[-1][0].endswith(" ...") else None
        if rest is not None:
            patterns.pop()
            code = rest[0][:3]
            tail = reply[len(patterns) :]
            if not tail or not all(line[:3] == code for line in tail):
                return False
            if not tail[-1].startswith(code + " ") and tail[-1] != code:
                return False
            reply = reply[: len(patterns)]
        elif len(reply) != len(patterns):
            return False
        return all(
            any(_prefix_matches(option, line) for option in options)
            for options, line in zip(patterns, reply, strict=True)
        )

    def __str__(self) -> str:
        return "\n".join(" | ".join(options) for options in self.lines)


def _prefix_matches(expected: str, actual: str) -> bool:
    """`expected` is all of `actual`, or its beginning up to a space: "250 2.1.0" matches
    "250 2.1.0 Ok", "250 2" does not."""
    return actual == expected or actual.startswith(expected + " ")


@dataclass(frozen=True)
class ExpectClose:
    """The server closes the connection, with no further reply."""


@dataclass(frozen=True)
class ExpectQuiet:
    """The server sends nothing for this many seconds."""

    seconds: float


@dataclass(frozen=True)
class Pause:
    """The client sends nothing for this many seconds."""

    seconds: float


@dataclass(frozen=True)
class StartTls:
    """The client's TLS handshake, after the 220 to STARTTLS; it must complete."""


Step = Send | Expect | ExpectClose | ExpectQuiet | Pause | StartTls


@dataclass(frozen=True)
class Case:
    title: str
    path: Path
    line: int
    ref: str = ""
    settings: tuple[str, ...] = ()  # sorted: the receiver's key
    steps: tuple[Step, ...] = ()
    text: str = field(default="", compare=False)  # the block as written

    @property
    def id(self) -> str:
        return f"{self.path.stem}: {self.title}"


def client_bytes(text: str) -> bytes:
    r"""A C: line's bytes: UTF-8, `{{a*65}}` repeated, then \r \n \t \0 \\ \xHH decoded."""
    text = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)
    raw = text.encode()
    return _ESCAPE.sub(
        lambda m: (
            bytes([int(m.group(1)[1:], 16)])
            if m.group(1).startswith(b"x")
            else _ESCAPES[m.group(1)]
        ),
        raw,
    )


def parse(path: Path) -> list[Case]:
    """Every session of one `.smtp` file, in order."""
    cases: list[Case] = []
    blocks = list(_blocks(path))
    titles = [title for title, _, _ in blocks]
    for title, start, lines in blocks:
        if titles.count(title) > 1:
            raise ScriptError(path, start, f"two cases are titled {title!r}")
        cases.append(_case(path, title, start, lines))
    return cases


def _blocks(path: Path) -> Iterator[tuple[str, int, list[tuple[int, str]]]]:
    title, start = "", 0
    lines: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("=== "):
            if title:
                yield title, start, lines
            title, start, lines = line[4:].strip(), number, []
        elif title:
            lines.append((number, line))
        elif line.strip() and not line.startswith("#"):
            raise ScriptError(path, number, "text before the first '=== title' line")
    if title:
        yield title, start, lines


def _case(path: Path, title: str, start: int, lines: list[tuple[int, str]]) -> Case:
    ref = ""
    settings: tuple[str, ...] = ()
    steps: list[Step] = []
    writes: list[bytes] = []
    shown: list[str] = []
    reply: list[tuple[str, ...]] = []

    def flush() -> None:
        if writes:
            steps.append(Send(b"".join(writes), "\n".join(shown)))
            writes.clear()
            shown.clear()

    for number, line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        if reply and kind != "S:":
            raise ScriptError(path, number, f"the reply above is not finished: {reply[-1]}")
        if kind == "ref:":
            ref = rest.strip()
        elif kind == "settings:":
            settings = tuple(sorted(_settings(path, number, rest.split())))
        elif kind in ("C:", "C~"):
            special = _client_special(rest) if kind == "C:" else None
            if special is not None:
                flush()
                steps.append(special)
            else:
                writes.append(client_bytes(rest) + (b"\r\n" if kind == "C:" else b""))
                shown.append(line)
        elif kind == "S:":
            flush()
            special_reply = _server_special(rest)
            if special_reply is not None:
                if reply:
                    raise ScriptError(path, number, "a reply is not finished before it")
                steps.append(special_reply)
                continue
            options = tuple(option.strip() for option in rest.split(" | "))
            if not all(_CODE.match(option) for option in options):
                raise ScriptError(path, number, f"not a reply line: {rest!r}")
            reply.append(options)
            if options[0][3:4] != "-":  # the last line of this reply
                steps.append(Expect(tuple(reply)))
                reply = []
        else:
            raise ScriptError(path, number, f"unknown line kind {kind!r}")
    if reply:
        raise ScriptError(path, start, "the last reply is not finished")
    flush()
    proxied = any(setting.startswith("proxy=") for setting in settings)
    if not proxied and (not steps or not isinstance(steps[0], Expect)):
        # The greeting, unless the case says otherwise. Behind --proxy-protocol a trusted
        # client speaks first (its header): those cases place the greeting themselves.
        steps.insert(0, Expect(((GREETING,),)))
    text = "\n".join([f"=== {title}", *(line for _, line in lines)]).rstrip()
    return Case(title, path, start, ref, settings, tuple(steps), text)


def _settings(path: Path, number: int, tokens: list[str]) -> Iterator[str]:
    for setting in tokens:
        name, _, value = setting.partition("=")
        known = bool(name in LIMIT_SETTINGS and re.fullmatch(r"\d+(\.\d+)?", value))
        known = known or (name == "proxy" and bool(value))  # --proxy-protocol CIDR,...
        if setting != "tls" and not known:
            raise ScriptError(path, number, f"unknown setting {setting!r}")
        yield setting


def _client_special(rest: str) -> Step | None:
    if rest == "<tls>":
        return StartTls()
    pause = _PAUSE.fullmatch(rest)
    return Pause(float(pause.group(1))) if pause else None


def _server_special(rest: str) -> Step | None:
    if rest == "<close>":
        return ExpectClose()
    quiet = _QUIET.fullmatch(rest)
    return ExpectQuiet(float(quiet.group(1))) if quiet else None
