"""Fork mode: the request span is current in the child, and the child's spans reach the parent."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import runtime


@pytest.mark.timeout(60)
def test_handler_span_in_a_forked_child_is_a_child_of_the_request_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    class Handler(runtime.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            with tracer.start_as_current_span("inner") as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                self.wfile.write(trace_id.encode() + b"\n")

    server = runtime.ForkingTCPServer(
        ("127.0.0.1", 0), Handler, telemetry=runtime.Telemetry(tracer_provider=provider)
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"go\n")
            # Half-close: a forked child holds a copy of this socket, so only
            # shutdown (not close) reliably signals end of input.
            sock.shutdown(socket.SHUT_WR)
            reply = sock.makefile("rb").readline().strip().decode()
        deadline = time.monotonic() + 10
        while len(exporter.get_finished_spans()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert set(spans) == {"inner", "Handler tcp"}, spans  # each exactly once
        assert len(exporter.get_finished_spans()) == 2
        request, inner = spans["Handler tcp"], spans["inner"]
        assert request.kind is SpanKind.SERVER
        assert inner.parent is not None and request.context is not None
        assert inner.parent.span_id == request.context.span_id
        assert format(request.context.trace_id, "032x") == reply
        hooks = [event.name for event in request.events]
        # Hooks timed in the child are in the parent's span too.
        for hook in ("get_request", "verify_request", "process_request", "finish_request",
                     "setup", "handle", "finish", "shutdown_request"):  # fmt: skip
            assert hook in hooks, hooks
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
