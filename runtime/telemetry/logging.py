"""Structured logs (structlog): JSON lines in production, console on a TTY.

No global configuration: each call builds its own logger from plain
processors, so the runtime never clobbers the application's structlog or
logging setup.  Lines written while a request's span is current carry
``trace_id`` and ``span_id`` (lowercase hex).

Every writer (structlog lines, the direct access writer, stdlib records)
writes through one :class:`~runtime.telemetry.logsink.LogSink` per
destination, whose writes never block serving: a reader that stops reading
costs dropped (counted, then reported) lines, not a stalled server.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from .._record import current_request
from .logsink import LogSink, json_report, sink_for

__all__ = [
    "FORMATS",
    "AccessWriter",
    "access_writer",
    "LEVELS",
    "add_request_fields",
    "add_trace_context",
    "default_logger",
    "log_sink",
    "make_logger",
    "route_stdlib_logging",
]

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")

try:
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - opentelemetry is a dependency
    _trace = None  # type: ignore[assignment]


def add_trace_context(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Add ``trace_id``/``span_id`` of the current span, if there is one."""
    if _trace is not None:
        ctx = _trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = format(ctx.trace_id, "032x")
            event["span_id"] = format(ctx.span_id, "016x")
    return event


def add_request_fields(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Add the fields the current request's handler bound with ``runtime.bind``."""
    record = current_request.get()
    if record is not None and record.fields:
        for key, value in record.fields.items():
            event.setdefault(key, value)
    return event


def _processors(fmt: str) -> tuple[list[Processor], Processor]:
    """The shared chain and the renderer, for structlog and stdlib records alike."""
    chain: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
        add_request_fields,
    ]
    if fmt == "json":
        # Frames without locals: locals can hold secrets and make lines huge.
        chain.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        return chain, structlog.processors.JSONRenderer()
    return chain, structlog.dev.ConsoleRenderer(colors=False)


class _LineLogger(structlog.WriteLogger):
    """structlog's WriteLogger writing one line per call to a :class:`LogSink`.

    No lock and no flush of its own: the sink orders lines and never buffers.
    """

    def __init__(self, sink: LogSink, fmt: str) -> None:
        super().__init__(cast(TextIO, sink))
        self.stream = sink
        self.fmt = fmt

    def msg(self, message: str) -> None:
        self.stream.write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _report_renderer(fmt: str) -> Callable[[int], str]:
    """The "log lines dropped" line in *fmt* (json: the sink's own)."""
    if fmt == "json":
        return json_report
    render = structlog.dev.ConsoleRenderer(colors=False)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def report(count: int) -> str:
        event: EventDict = {"count": count, "pid": os.getpid(), "event": "log lines dropped"}
        event["level"] = "warning"
        return str(render(None, "warning", stamp(None, "warning", event))) + "\n"

    return report


def log_sink(logger: Any) -> LogSink | None:
    """The sink a logger made by :func:`make_logger` writes to (None for any other logger).

    Connect its drops to a metric with ``log_sink(logger).on_drop = ...``.
    """
    inner = getattr(logger, "_logger", None)
    return inner.stream if isinstance(inner, _LineLogger) else None


#: Writes one access line: (fields in order, the request's span or None, the event).
AccessWriter = Callable[[dict[str, Any], Any, str], None]


def access_writer(logger: Any) -> AccessWriter | None:
    """A direct writer of access lines for a JSON logger made by :func:`make_logger`.

    The line is the one the logger would write (its bound context, the fields,
    ``event``, ``level``, ``timestamp``, then ``trace_id``/``span_id`` of the
    request's span), rendered without structlog's processor chain and written
    to the logger's :class:`LogSink` (one non-blocking write).  None for any
    other logger, which then gets the access line the usual way.
    """
    inner = getattr(logger, "_logger", None)
    if not isinstance(inner, _LineLogger) or inner.fmt != "json":
        return None
    context = dict(structlog.get_context(logger))
    encode = json.JSONEncoder(default=repr).encode
    write = inner.stream.write

    def emit(fields: dict[str, Any], span: Any, name: str = "request") -> None:
        event = {**context, **fields} if context else fields
        event["event"] = name
        event["level"] = "info"
        event["timestamp"] = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        if span is not None:
            ctx = span.get_span_context()
            if ctx.is_valid:
                event["trace_id"] = format(ctx.trace_id, "032x")
                event["span_id"] = format(ctx.span_id, "016x")
        write(encode(event) + "\n")

    return emit


def make_logger(
    *, level: str = "info", fmt: str = "auto", stream: IO[str] | LogSink | None = None
) -> FilteringBoundLogger:
    """A logger writing to *stream* (stderr) as JSON lines or, on a TTY, console text.

    Lines go through the stream's shared :class:`LogSink` (:func:`log_sink`);
    *stream* may be a sink itself.
    """
    sink = sink_for(stream)
    if fmt == "auto":
        fmt = "console" if sink.isatty() else "json"
    sink.render_report = _report_renderer(fmt)
    chain, renderer = _processors(fmt)
    processors = [*chain, renderer]
    # One write per line (PrintLogger writes the newline separately): with
    # PYTHONUNBUFFERED, common in containers, the pre-fork workers' lines
    # would interleave on the shared stderr.  Lines up to PIPE_BUF stay whole.
    logger: Any = structlog.wrap_logger(
        _LineLogger(sink, fmt),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
    )
    return logger  # type: ignore[no-any-return]


def default_logger() -> FilteringBoundLogger:
    """The logger a server uses when none is given: info and up, to stderr."""
    return make_logger()


def route_stdlib_logging(
    *, level: str = "info", fmt: str = "auto", stream: IO[str] | LogSink | None = None
) -> logging.Handler:
    """Render the standard ``logging`` records of user code like the runtime's own lines.

    Replaces the root logger's handlers (for the CLI, which owns the process;
    a library embedding the runtime keeps its own logging setup).  Returns
    the installed handler, writing to the stream's shared :class:`LogSink`.
    """
    sink = sink_for(stream)
    if fmt == "auto":
        fmt = "console" if sink.isatty() else "json"
    chain, renderer = _processors(fmt)
    handler: logging.Handler = logging.StreamHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *chain],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelName(level.upper()))
    return handler
