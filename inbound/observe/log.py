"""JSON logs, one object per line, with an event name like `message.spooled` and fields.

`emit(logger, "message.spooled", message_id=...)` is the only way stages log events, so the
fields stay machine-readable. Callers pass identifiers and sizes, never bodies or secrets.
Whatever else would write to stderr (asyncio and other libraries, uncaught exceptions in
threads and at exit) goes through the same JSON lines, rate-limited (`inbound.observe.ratelimit`):
no plain-text line, and no flood when the same error repeats thousands of times a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from inbound.observe.ratelimit import RateLimitedHandler

# The source file of a record `emit_fields` makes: the event names where it comes from.
_SOURCE = "inbound"
# asyncio's exception handler, and exceptions no one caught (threads, `__del__`, the end).
_asyncio_log = logging.getLogger("inbound.asyncio")
_python_log = logging.getLogger("inbound.python")


# One encoder for every line (json.dumps with options builds one per call).
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)
# The text of the last second a line was written in: most lines share it with the one before.
_second: list[tuple[int, str]] = [(-1, "")]


def _timestamp(created: float) -> str:
    """`datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`, the second's
    text made once a second: the same rounding (microseconds, half to even, then cut)."""
    whole = math.floor(created)
    micro = round((created - whole) * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    second, text = _second[0]
    if second != whole:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = (whole, text)
    return f"{text}.{micro // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """`context` goes into every line (e.g. the worker process that wrote it)."""

    def __init__(self, context: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.context = dict(context or {})

    def format(self, record: logging.LogRecord) -> str:
        return _JSON.encode(self.entry(record))

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        """The fields of one line, whatever its format."""
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.getMessage(),
            **self.context,
        }
        if getattr(record, "event", None) is None and not record.name.startswith("inbound"):
            # A library's own record (asyncio's "socket.send() raised exception."): its first
            # line, so that one record stays one line.
            entry["event"] = "library.logged"
            entry["logger"] = record.name
            entry["message"] = record.getMessage().split("\n", 1)[0][:200]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where it was raised, never the text: exception text can carry
            # addresses or message content; file names, lines and functions cannot.
            entry["error_type"] = record.exc_info[0].__name__
            entry["where"] = where(record.exc_info[2])
        return entry


class TextFormatter(JsonFormatter):
    """`--log-format text`, for a terminal: `TIME LEVEL EVENT key=value ...`, one line per
    event as in JSON (the same fields; a value with a space, a quote or a line break is
    written as a JSON string, so no value can start a line of its own)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record)
        ts, level, event = entry.pop("ts"), entry.pop("level"), entry.pop("event")
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in entry.items())
        return f"{ts} {level:<7} {event}" + (f" {fields}" if fields else "")


_BARE = re.compile(r"[^\s\"'=\\]*")


def _text_value(value: object) -> str:
    if isinstance(value, str) and value and _BARE.fullmatch(value) and value.isprintable():
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def where(tb: TracebackType | None, depth: int = 8) -> list[str]:
    """The innermost `depth` frames of a traceback as `file:line function`, to find a bug by
    without the values that were in play."""
    frames = traceback.extract_tb(tb)[-depth:]
    return [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in frames]


def emit(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: object
) -> None:
    emit_fields(logger, event, fields, level=level)


def emit_fields(
    logger: logging.Logger, event: str, fields: Mapping[str, object], *, level: int = logging.INFO
) -> None:
    if not logger.isEnabledFor(level):
        return
    # The record made directly: `Logger.log` would walk the stack for a caller no line shows.
    record = logger.makeRecord(
        logger.name,
        level,
        _SOURCE,
        0,
        event,
        (),
        None,
        extra={"event": event, "fields": dict(fields)},
    )
    logger.handle(record)


def configure(
    level: int = logging.INFO,
    context: Mapping[str, object] | None = None,
    *,
    text: bool = False,
) -> None:
    """JSON lines on stderr (`text`: text lines) for the `inbound` loggers and for everything
    else that would write to stderr (other libraries' records, warnings, uncaught exceptions),
    the latter rate-limited; aiosmtpd's own chatter is muted."""
    handler = RateLimitedHandler(sys.stderr)
    handler.setFormatter(TextFormatter(context) if text else JsonFormatter(context))
    root = logging.getLogger("inbound")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Every other logger (asyncio, botocore, py.warnings) reaches the root logger: the same
    # handler, so nothing falls through to logging's plain-text last resort.
    top = logging.getLogger()
    top.handlers[:] = [handler]
    top.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # aiosmtpd logs command lines (addresses, and body lines a client sends as commands after
    # a refused DATA) as plain text: our own events say what matters, without the text.
    aiosmtpd = logging.getLogger("mail.log")
    aiosmtpd.handlers[:] = [logging.NullHandler()]
    aiosmtpd.propagate = False
    # No line shows the thread or process a record was made in (the context names a worker):
    # not looking them up saves most of the making of a record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    threading.excepthook = _thread_failed
    sys.unraisablehook = _unraisable
    sys.excepthook = _uncaught


def asyncio_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop's exception handler: one JSON line (`asyncio.error`), rate-limited by its
    message ("socket.accept() out of system resource"), never the exception's text."""
    message = str(context.get("message") or "unhandled exception in event loop")
    message = message.split("\n", 1)[0][:200]
    fields: dict[str, object] = {"message": message}
    error = context.get("exception")
    if isinstance(error, BaseException):
        fields["error_type"] = type(error).__name__
        fields["errno"] = getattr(error, "errno", None)
        fields["where"] = where(error.__traceback__)
    _asyncio_log.error(
        "asyncio.error",
        extra={"event": "asyncio.error", "fields": fields, "rate_key": message},
    )


def capture_asyncio(loop: asyncio.AbstractEventLoop) -> None:
    """Send `loop`'s unhandled errors (failed accepts, callbacks that raised, tasks whose
    exception no one read) to the JSON log instead of asyncio's plain-text tracebacks."""
    loop.set_exception_handler(asyncio_exception)


def _python_failure(
    event: str,
    error_type: type[BaseException],
    tb: TracebackType | None = None,
    **fields: object,
) -> None:
    fields["error_type"] = error_type.__name__
    fields["where"] = where(tb)
    _python_log.error(
        event,
        extra={"event": event, "fields": fields, "rate_key": f"{event}:{error_type.__name__}"},
    )


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is not SystemExit:
        _python_failure(
            "thread.failed",
            args.exc_type,
            args.exc_traceback,
            thread=args.thread.name if args.thread else None,
        )


def _unraisable(args: Any) -> None:
    _python_failure("python.unraisable", args.exc_type, args.exc_traceback)


def _uncaught(
    exc_type: type[BaseException], _value: BaseException, tb: TracebackType | None
) -> None:
    _python_failure("process.failed", exc_type, tb)
