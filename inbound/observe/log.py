"""JSON logs, one object per line, with an event name like `message.spooled` and fields.

`emit(logger, "message.spooled", message_id=...)` is the only way stages log events, so the
fields stay machine-readable. Callers pass identifiers and sizes, never bodies or secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    """`context` goes into every line (e.g. the worker process that wrote it)."""

    def __init__(self, context: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.getMessage(),
            **self.context,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text can carry addresses or message content.
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, ensure_ascii=False)


def emit(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: object
) -> None:
    emit_fields(logger, event, fields, level=level)


def emit_fields(
    logger: logging.Logger, event: str, fields: Mapping[str, object], *, level: int = logging.INFO
) -> None:
    logger.log(level, event, extra={"event": event, "fields": dict(fields)})


def configure(level: int = logging.INFO, context: Mapping[str, object] | None = None) -> None:
    """JSON lines on stderr for the `inbound` loggers; aiosmtpd's own chatter is muted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(context))
    root = logging.getLogger("inbound")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # aiosmtpd logs command lines (addresses, and body lines a client sends as commands after
    # a refused DATA) as plain text: our own events say what matters, without the text.
    aiosmtpd = logging.getLogger("mail.log")
    aiosmtpd.handlers[:] = [logging.NullHandler()]
    aiosmtpd.propagate = False
