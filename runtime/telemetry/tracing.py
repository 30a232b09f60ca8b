"""OpenTelemetry traces: one SERVER span per request, each hook visible in it.

The span starts when the connection or datagram is taken and ends after
``shutdown_request``.  Hook timings are collected by the core in the request
record and attached when the span ends, as timed events (default: an event
per hook at its start time, with ``duration_s``) or as child spans with the
hooks' own start and end (``hook_spans=True``; costs a span each).  Nothing
is built for a span that is not recording.
"""

from __future__ import annotations

import socket
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from .._record import Operation, RequestRecord, span_values
from .._version import __version__
from ._forked import Capture, decode
from .metrics import HTTP_METHODS as _HTTP_METHODS

_CONNECTION_LINK = {"socketserver.unit": "connection"}

__all__ = ["ServerTracing", "Tracing"]


class Tracing:
    """A tracer from *tracer_provider* (default: the global one)."""

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, hook_spans: bool = False
    ) -> None:
        self.provider = (
            tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        )
        self.tracer = trace.get_tracer("socketserver-runtime", __version__, self.provider)
        self.hook_spans = hook_spans

    def bind(self, server: Any) -> ServerTracing:
        return ServerTracing(self, server)

    def flush(self, timeout: float) -> int:
        """The flush on the way out: export what waits, for at most *timeout* seconds.

        Returns within *timeout* (and a few milliseconds) whatever the
        exporter does, and the number of spans dropped meanwhile: given up at the
        deadline (still queued, or in an export that had not returned) or
        failed to export.  With the runtime's provider (:mod:`.otel`) those are
        also reported to its ``on_drop``; with another provider its
        ``force_flush`` runs on a thread of its own, not waited for after the
        deadline, and the count is 0 (unknown).
        """
        final = getattr(self.provider, "flush_or_drop", None)
        if final is not None:
            return int(final(timeout * 1000))
        flush = getattr(self.provider, "force_flush", None)
        if flush is not None:
            from .otel import run_within

            run_within(lambda: flush(int(timeout * 1000)), timeout, "runtime-span-flush")
        return 0


def _address_attributes(prefix: str, address: Any) -> dict[str, Any]:
    if isinstance(address, tuple) and len(address) >= 2:
        return {f"{prefix}.address": str(address[0]), f"{prefix}.port": int(address[1])}
    if isinstance(address, (str, bytes)) and address:
        return {f"{prefix}.address": address if isinstance(address, str) else address.decode()}
    return {}


def _host_attributes(headers: Any) -> dict[str, Any]:
    """``server.address``/``server.port`` from the request's Host header (OpenTelemetry's
    choice: the name the client asked for, not the address the listener is bound to)."""
    host = headers.get("Host") if headers is not None else None
    if not host or not isinstance(host, str):
        return {}
    name, port = host, ""
    if host.startswith("["):  # [::1]:8000
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    attributes: dict[str, Any] = {"server.address": name}
    if port.isdigit():
        attributes["server.port"] = int(port)
    return attributes


class ServerTracing:
    def __init__(self, tracing: Tracing, server: Any) -> None:
        self._provider: Any = tracing.provider
        self._capture: Any = None
        self._tracer = tracing.tracer
        self._hook_spans = tracing.hook_spans
        factory = server.RequestHandlerClass
        factory = getattr(factory, "func", factory)  # functools.partial(Handler, ...)
        handler = getattr(factory, "__name__", "request")
        transport = server.transport
        self.name = f"{handler} {transport}"
        family = getattr(server, "address_family", None)  # (a bare BaseServer has none)
        self._static: dict[str, Any] = {"network.transport": transport}
        if family == socket.AF_INET:
            self._static["network.type"] = "ipv4"
        elif family == socket.AF_INET6:
            self._static["network.type"] = "ipv6"
        self._static.update(_address_attributes("network.local", server.server_address))
        self._server_address = _address_attributes("server", server.server_address)
        self._scheme = "https" if getattr(server, "ssl_context", None) is not None else "http"

    def request_started(self, record: RequestRecord) -> None:
        span = self._tracer.start_span(self.name, kind=SpanKind.SERVER, start_time=record.wall_ns)
        if span.is_recording():
            span.set_attributes(self._static)
            span.set_attributes(_address_attributes("network.peer", record.client_address))
            ctx = span.get_span_context()
            if ctx.trace_flags.sampled:  # once per request: every latency observation uses it
                record.exemplar = {
                    "trace_id": format(ctx.trace_id, "032x"),
                    "span_id": format(ctx.span_id, "016x"),
                }
        record.span = span

    # -- operations: HTTP requests, marked operations ---------------------------

    def operation_started(self, op: Operation, carrier: Any) -> None:
        """A SERVER span for *op*: its parent is the caller's context taken from *carrier*
        (the request headers) by the configured propagators, or, without a carrier, the
        current context (the connection's span); a link to the connection's span.

        The attributes are set once the span records (the sampler sees the name, kind,
        parent and link, not them): an unsampled request pays no attribute work.
        """
        record = op.record
        conn = record.span
        links = None
        if conn is not None and conn.is_recording():
            links = [Link(conn.get_span_context(), _CONNECTION_LINK)]
        # The caller's trace (and baggage) from the headers, or none; else the current span
        # (from an empty context: some propagators start from the current one, whose span
        # is the connection's.)
        if carrier is not None:
            parent = propagate.extract(carrier, context=otel_context.Context())
        else:
            parent = otel_context.get_current()
        http = op.kind == "http"
        name = (op.method if op.method in _HTTP_METHODS else "HTTP") if http else op.kind
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, links=links, start_time=op.wall_ns
        )
        op.span = span
        op.context = trace.set_span_in_context(span, parent)
        if not span.is_recording():
            return
        span.set_attributes(self._http_attributes(op, carrier) if http else self._static)
        ctx = span.get_span_context()
        if ctx.trace_flags.sampled:
            op.exemplar = {
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
            }

    def _http_attributes(self, op: Operation, headers: Any) -> dict[str, Any]:
        method = op.method if op.method in _HTTP_METHODS else "_OTHER"
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": op.path,
            "url.scheme": self._scheme,
        }
        if method == "_OTHER":
            attributes["http.request.method_original"] = op.method
        if op.protocol:
            attributes["network.protocol.version"] = op.protocol
        agent = op.user_agent
        if agent:
            attributes["user_agent.original"] = agent
        attributes.update(_host_attributes(headers) or self._server_address)
        client = op.record.client_address
        if isinstance(client, tuple) and client:
            attributes["client.address"] = str(client[0])
            if len(client) > 1:
                attributes["client.port"] = int(client[1])
        return attributes

    @staticmethod
    def enter(op: Operation) -> object:
        if op.context is None:
            return None
        return otel_context.attach(op.context)

    def operation_finished(self, op: Operation, end: float) -> None:
        span = op.span
        if span is None:
            return
        op.context = None
        end_ns = op.wall_ns + int((end - op.start) * 1e9)
        if span.is_recording():
            if op.kind == "http":
                if op.route:
                    method = op.method if op.method in _HTTP_METHODS else "HTTP"
                    span.update_name(f"{method} {op.route}")
                    span.set_attribute("http.route", op.route)
                if op.status:
                    span.set_attribute("http.response.status_code", op.status)
                if op.body_in is not None:
                    span.set_attribute("http.request.body.size", op.body_in)
                if op.body_out is not None:
                    span.set_attribute("http.response.body.size", op.body_out)
            if op.attributes:
                span.set_attributes(span_values(op.attributes))
            if op.ended:
                span.set_attribute("socketserver.outcome", op.ended)
            if op.error_type:
                span.set_attribute("error.type", op.error_type)
                if op.error is not None:
                    span.record_exception(op.error, timestamp=end_ns)
                span.set_status(Status(StatusCode.ERROR, op.error_type))
        span.end(end_ns)

    @staticmethod
    def activate(record: RequestRecord) -> object:
        if record.span is None:
            return None
        return otel_context.attach(trace.set_span_in_context(record.span))

    @staticmethod
    def deactivate(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def request_finished(self, record: RequestRecord, end: float) -> None:
        span = record.span
        if span is None:
            return
        base, perf = record.wall_ns, record.perf

        def ns(t: float) -> int:
            return base + int((t - perf) * 1e9)

        if span.is_recording():
            if self._hook_spans:
                parent = trace.set_span_in_context(span)
                for name, start, stop in record.hooks:
                    self._tracer.start_span(name, context=parent, start_time=ns(start)).end(
                        ns(stop)
                    )
            else:
                for name, start, stop in record.hooks:
                    span.add_event(name, {"duration_s": stop - start}, ns(start))
            if record.tls is not None:
                protocol, cipher = record.tls
                span.set_attribute("tls.protocol.version", protocol)
                span.set_attribute("tls.cipher", cipher)
            if record.rejected:
                span.set_attribute("socketserver.rejected", record.rejected)
            if record.error_type:
                span.set_attribute("error.type", record.error_type)
                span.set_attribute("socketserver.error_hook", record.error_hook)
                if record.error is not None:
                    span.record_exception(record.error, timestamp=ns(end))
                span.set_status(Status(StatusCode.ERROR, record.error_type))
        span.end(ns(end))

    # -- forked children: their spans travel to the parent ----------------------

    def child_begin(self) -> None:
        active = getattr(self._provider, "_active_span_processor", None)
        if active is not None and hasattr(active, "_span_processors"):
            # An SDK provider: in this child's copy of it, ended spans go only to
            # the capture, so they are exported once, by the parent.
            self._capture = Capture()
            active._span_processors = (self._capture,)

    def child_end(self) -> object:
        return self._capture.spans if self._capture is not None else None

    def child_merge(self, payload: object) -> None:
        processor = getattr(self._provider, "_active_span_processor", None)
        if not payload or processor is None:
            return
        resource = getattr(self._provider, "resource", None)
        for data in payload:  # type: ignore[attr-defined]
            processor.on_end(decode(data, resource))
