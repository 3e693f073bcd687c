"""The exception tree of inbound: every error a user can cause is an `InboundError`.

`ConfigError` carries every problem found in a file at once, each with its position, so the
command line can print them GNU style (`FILE:LINE:COL: path: message`) and editors jump to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Severity(Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file, with the position of the offending node."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Severity = field(default=Severity.ERROR, compare=False)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        if self.path:
            return f"{where}: {prefix}{self.path}: {self.message}"
        return f"{where}: {prefix}{self.message}"


class InboundError(Exception):
    """Root of every error inbound raises on purpose."""


class ConfigError(InboundError):
    """A file could not be loaded; `issues` lists every problem, sorted by position."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class InputError(InboundError):
    """An input other than a rule file is unusable (missing file, unreadable message, bad flag)."""


class ActionError(InboundError):
    """An action did not succeed. The dispatcher retries transient ones, dead-letters the rest."""

    transient: bool = True
    # Seconds the target asked us to wait before the next attempt (HTTP Retry-After); None:
    # the retry schedule decides alone.
    retry_after: float | None = None


class TransientActionError(ActionError):
    """Worth retrying: throttling, timeouts, a target that is down."""

    transient = True

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after


class PermanentActionError(ActionError):
    """Retrying cannot help: a missing bucket, a denied permission, an invalid parameter."""

    transient = False


def read_user_file(path: Path, name: str | None = None) -> bytes:
    """The bytes of a file the user named; missing, a directory or unreadable is an
    `InputError` that names it as `name` (default: the path, e.g. "--tls-cert PATH")."""
    what = str(path) if name is None else name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{what}: is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot read: {exc.strerror}") from None
