"""Carry spans that a forked child ends back to the parent, as plain data.

A child handles one request and leaves with ``os._exit``: spans queued in its
copy of a batch processor would be lost, and exporting from every child would
cost a connection per request.  So the child captures its ended spans, the
runtime pickles them with the child's report over the child's pipe, and the
parent hands them to its own span processors, which export them as usual.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

__all__ = ["Capture", "decode", "encode"]

Encoded = dict[str, Any]


class Capture(SpanProcessor):
    """Collects every span ended in this (child) process, encoded."""

    def __init__(self) -> None:
        self.spans: list[Encoded] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(encode(span))


def _ctx(ctx: SpanContext | None) -> tuple[int, int, int, list[tuple[str, str]]] | None:
    if ctx is None:
        return None
    return (ctx.trace_id, ctx.span_id, int(ctx.trace_flags), list(ctx.trace_state.items()))


def _unctx(data: tuple[int, int, int, list[tuple[str, str]]] | None) -> SpanContext | None:
    if data is None:
        return None
    trace_id, span_id, flags, state = data
    return SpanContext(trace_id, span_id, False, TraceFlags(flags), TraceState(state))


def encode(span: ReadableSpan) -> Encoded:
    scope = span.instrumentation_scope
    return {
        "name": span.name,
        "context": _ctx(span.context),
        "parent": _ctx(span.parent),
        "kind": span.kind.value,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "links": [(_ctx(link.context), dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code.value, span.status.description),
        "scope": (scope.name, scope.version, scope.schema_url) if scope else None,
    }


def decode(data: Encoded, resource: Any) -> ReadableSpan:
    code, description = data["status"]
    scope = data["scope"]
    return ReadableSpan(
        name=data["name"],
        context=_unctx(data["context"]),
        parent=_unctx(data["parent"]),
        resource=resource,
        attributes=data["attributes"],
        events=[Event(name, attrs, ts) for name, attrs, ts in data["events"]],
        links=[Link(_unctx(c), attrs) for c, attrs in data["links"]],  # type: ignore[arg-type]
        kind=SpanKind(data["kind"]),
        status=Status(StatusCode(code), description),
        start_time=data["start"],
        end_time=data["end"],
        instrumentation_scope=InstrumentationScope(*scope) if scope else None,
    )
