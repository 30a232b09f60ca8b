"""Structured logs (structlog): JSON lines in production, console on a TTY.

No global configuration: each call builds its own logger from plain
processors, so the runtime never clobbers the application's structlog or
logging setup.  Lines written while a request's span is current carry
``trace_id`` and ``span_id`` (lowercase hex).
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from .api import current_request

__all__ = [
    "FORMATS",
    "LEVELS",
    "add_request_fields",
    "add_trace_context",
    "default_logger",
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


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (it may be replaced later)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


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


def make_logger(
    *, level: str = "info", fmt: str = "auto", stream: IO[str] | None = None
) -> FilteringBoundLogger:
    """A logger writing to *stream* (stderr) as JSON lines or, on a TTY, console text."""
    if stream is None:
        stream = cast(IO[str], _Stderr())
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    chain, renderer = _processors(fmt)
    processors = [*chain, renderer]
    # One write per line (PrintLogger writes the newline separately): with
    # PYTHONUNBUFFERED, common in containers, the pre-fork workers' lines
    # would interleave on the shared stderr.  Lines up to PIPE_BUF stay whole.
    logger: Any = structlog.wrap_logger(
        structlog.WriteLogger(stream),  # type: ignore[arg-type]
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
    )
    return logger  # type: ignore[no-any-return]


def default_logger() -> FilteringBoundLogger:
    """The logger a server uses when none is given: info and up, to stderr."""
    return make_logger()


def route_stdlib_logging(
    *, level: str = "info", fmt: str = "auto", stream: IO[str] | None = None
) -> logging.Handler:
    """Render the standard ``logging`` records of user code like the runtime's own lines.

    Replaces the root logger's handlers (for the CLI, which owns the process;
    a library embedding the runtime keeps its own logging setup).  Returns
    the installed handler.
    """
    if stream is None:
        stream = cast(IO[str], _Stderr())
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    chain, renderer = _processors(fmt)
    handler = logging.StreamHandler(stream)
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
