"""The instrumented hook chain (runtime/server.py): metrics, traces and logs per hook."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

import runtime
from runtime.telemetry.logging import make_logger

pytestmark = pytest.mark.timeout(60)

Metric = Callable[..., float]
WaitFor = Callable[..., None]

REQUEST_HOOKS = (
    "get_request",
    "verify_request",
    "process_request",
    "finish_request",
    "setup",
    "handle",
    "finish",
    "shutdown_request",
)
HOOK_COUNT = "socketserver_hook_duration_seconds_count"
REQUESTS = "socketserver_requests_total"


class Echo(runtime.StreamRequestHandler):
    """Echo one line; ``boom`` raises ValueError in handle()."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if line.startswith(b"boom"):
            raise ValueError("boom requested")
        self.wfile.write(line)


class FailingSetup(runtime.StreamRequestHandler):
    def setup(self) -> None:
        raise KeyError("no setup for you")


def roundtrip(address: Any, payload: bytes = b"hello\n", family: int = socket.AF_INET) -> bytes:
    """Send one line, return the reply line (b"" if the server closed without answering)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(payload)
        with sock.makefile("rb") as reader:
            try:
                return reader.readline()
            except ConnectionResetError:
                return b""


def finished_spans(exporter: InMemorySpanExporter, count: int, wait_for: WaitFor) -> list[Any]:
    wait_for(lambda: len(exporter.get_finished_spans()) >= count, what=f"{count} spans")
    return list(exporter.get_finished_spans())


def request_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


# -- metrics: one histogram observation per hook -----------------------------------


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_every_request_hook_is_observed_once_per_request(
    server_class: type[runtime.TCPServer],
    telemetry: runtime.Telemetry,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server = serve(server_class(("127.0.0.1", 0), Echo, telemetry=telemetry))
    for n in range(3):
        assert roundtrip(server.server_address, b"line %d\n" % n) == b"line %d\n" % n
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 3, what="3 ok requests")
    for hook in REQUEST_HOOKS:
        assert metric(HOOK_COUNT, hook=hook, transport="tcp") == 3, hook
        assert metric("socketserver_hook_duration_seconds_sum", hook=hook) >= 0
    assert metric(HOOK_COUNT, hook="handle_error") == 0
    assert metric(HOOK_COUNT, hook="handle_timeout") == 0
    # service_actions runs once per turn of the serving loop
    wait_for(lambda: metric(HOOK_COUNT, hook="service_actions") >= 1, what="service_actions")
    assert metric("socketserver_request_duration_seconds_count", outcome="ok") == 3


def test_handle_error_hook_observed_when_a_handler_raises(
    telemetry: runtime.Telemetry,
    json_logger: Any,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server = serve(
        runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger)
    )
    assert roundtrip(server.server_address, b"boom\n") == b""
    wait_for(lambda: metric(REQUESTS, outcome="error") == 1, what="error request")
    assert metric(HOOK_COUNT, hook="handle_error") == 1
    # finish() still ran (BaseRequestHandler's try/finally) and was measured
    assert metric(HOOK_COUNT, hook="finish") == 1


def test_handle_timeout_hook_observed_through_handle_request(
    telemetry: runtime.Telemetry, metric: Metric
) -> None:
    timeouts: list[float] = []

    class Impatient(runtime.TCPServer):
        timeout = 0.05

        def handle_timeout(self) -> None:
            timeouts.append(self.timeout or 0.0)

    with Impatient(("127.0.0.1", 0), Echo, telemetry=telemetry) as server:
        server.handle_request()  # nobody connects: times out
    assert timeouts == [0.05]
    assert metric(HOOK_COUNT, hook="handle_timeout") == 1
    assert metric(HOOK_COUNT, hook="get_request") == 0


# -- outcomes, rejections, errors ----------------------------------------------------


def test_requests_total_counts_ok_error_and_rejected(
    telemetry: runtime.Telemetry,
    json_logger: Any,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    handled: list[bytes] = []

    class Picky(runtime.TCPServer):
        refuse = False

        def verify_request(self, request: Any, client_address: Any) -> bool:
            return not self.refuse

    class Recording(Echo):
        def handle(self) -> None:
            handled.append(b"x")
            super().handle()

    server = serve(Picky(("127.0.0.1", 0), Recording, telemetry=telemetry, logger=json_logger))
    assert roundtrip(server.server_address) == b"hello\n"
    assert roundtrip(server.server_address, b"boom\n") == b""
    server.refuse = True
    assert roundtrip(server.server_address) == b""  # closed without running the handler
    wait_for(lambda: metric(REQUESTS) == 3, what="3 requests")
    assert len(handled) == 2
    assert metric(REQUESTS, outcome="ok") == 1
    assert metric(REQUESTS, outcome="error") == 1
    assert metric(REQUESTS, outcome="rejected") == 1
    assert metric("socketserver_requests_rejected_total", reason="verify_request") == 1
    assert metric("socketserver_requests_rejected_total", reason="overload") == 0
    for outcome in ("ok", "error", "rejected"):
        assert metric("socketserver_request_duration_seconds_count", outcome=outcome) == 1


def test_errors_total_labelled_by_hook_and_exception_class(
    telemetry: runtime.Telemetry,
    registry: CollectorRegistry,
    json_logger: Any,
    serve: Any,
    wait_for: WaitFor,
    metric: Metric,
) -> None:
    server = serve(
        runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger)
    )
    roundtrip(server.server_address, b"boom\n")
    roundtrip(server.server_address, b"boom\n")
    wait_for(lambda: metric(REQUESTS, outcome="error") == 2, what="2 errors")
    labels = {
        "server": "TCPServer", "transport": "tcp", "hook": "handle", "error_type": "ValueError"
    }  # fmt: skip
    assert registry.get_sample_value("socketserver_errors_total", labels) == 2

    other = serve(
        runtime.TCPServer(
            ("127.0.0.1", 0), FailingSetup, telemetry=telemetry, logger=json_logger,
            server_name="setup-fails",
        )
    )  # fmt: skip
    roundtrip(other.server_address)
    wait_for(lambda: metric(REQUESTS, server="setup-fails", outcome="error") == 1, what="error")
    assert metric("socketserver_errors_total", server="setup-fails", hook="setup",
                  error_type="KeyError") == 1  # fmt: skip
    assert metric("socketserver_errors_total", server="setup-fails", hook="handle") == 0


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_a_raising_handler_does_not_take_the_server_down(
    server_class: type[runtime.TCPServer],
    telemetry: runtime.Telemetry,
    json_logger: Any,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server = serve(server_class(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger))
    for _ in range(3):
        assert roundtrip(server.server_address, b"boom\n") == b""
        assert roundtrip(server.server_address, b"still there?\n") == b"still there?\n"
    wait_for(lambda: metric(REQUESTS) == 6, what="6 requests")
    assert metric(REQUESTS, outcome="ok") == 3
    assert metric(REQUESTS, outcome="error") == 3


# -- logs -------------------------------------------------------------------------


def _log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_handle_error_writes_one_json_line_with_traceback_and_nothing_on_stderr(
    capsys: pytest.CaptureFixture[str],
    telemetry: runtime.Telemetry,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    stream = io.StringIO()
    server = serve(
        runtime.TCPServer(
            ("127.0.0.1", 0), Echo, telemetry=telemetry,
            logger=make_logger(fmt="json", stream=stream),
        )
    )  # fmt: skip
    with socket.create_connection(server.server_address, timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"boom\n")
        assert sock.recv(100) == b""
    wait_for(lambda: metric(REQUESTS, outcome="error") == 1, what="error request")

    errors = [line for line in _log_lines(stream) if line.get("level") == "error"]
    assert len(errors) == 1
    line = errors[0]
    assert line["event"] == "request failed"
    assert line["server"] == "TCPServer"
    assert line["hook"] == "handle"
    assert line["client"] == f"127.0.0.1:{client_port}"
    exception = line["exception"]
    assert isinstance(exception, list) and exception, "structured traceback expected"
    assert exception[0]["exc_type"] == "ValueError"
    assert exception[0]["exc_value"] == "boom requested"
    assert any(frame["name"] == "handle" for frame in exception[0]["frames"])

    captured = capsys.readouterr()
    assert captured.err == ""  # the standard library would print the traceback here


def test_error_log_line_carries_the_request_trace_id(
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    log_stream: io.StringIO,
    json_logger: Any,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    server = serve(
        runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger)
    )
    roundtrip(server.server_address, b"boom\n")
    (span,) = finished_spans(span_exporter, 1, wait_for)
    (error,) = [line for line in _log_lines(log_stream) if line.get("level") == "error"]
    assert error.get("trace_id") == format(span.context.trace_id, "032x")
    assert error.get("span_id") == format(span.context.span_id, "016x")


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_lines_logged_inside_handle_carry_the_request_trace_context(
    server_class: type[runtime.TCPServer],
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    log_stream: io.StringIO,
    json_logger: Any,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    class Chatty(runtime.StreamRequestHandler):
        def handle(self) -> None:
            self.server.logger.info("handling", line=self.rfile.readline().decode())
            self.wfile.write(b"done\n")

    server = serve(server_class(("127.0.0.1", 0), Chatty, telemetry=telemetry, logger=json_logger))
    assert roundtrip(server.server_address) == b"done\n"
    (span,) = finished_spans(span_exporter, 1, wait_for)
    (line,) = [line for line in _log_lines(log_stream) if line["event"] == "handling"]
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")


# -- traces -----------------------------------------------------------------------


def test_one_server_span_per_request_with_network_attributes(
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry))
    ports = []
    for _ in range(2):
        with socket.create_connection(server.server_address, timeout=10) as sock:
            ports.append(sock.getsockname()[1])
            sock.sendall(b"hi\n")
            assert sock.recv(10) == b"hi\n"
    spans = finished_spans(span_exporter, 2, wait_for)
    assert len(spans) == 2
    assert len({s.context.trace_id for s in spans}) == 2, "each request is its own trace"
    for span, port in zip(sorted(spans, key=lambda s: s.start_time), ports, strict=True):
        assert span.name == "Echo tcp"
        assert span.kind is SpanKind.SERVER
        assert span.parent is None
        attrs = dict(span.attributes)
        assert attrs["network.transport"] == "tcp"
        assert attrs["network.type"] == "ipv4"
        assert attrs["network.peer.address"] == "127.0.0.1"
        assert attrs["network.peer.port"] == port
        assert attrs["network.local.address"] == "127.0.0.1"
        assert attrs["network.local.port"] == server.server_address[1]
        assert span.status.status_code is not StatusCode.ERROR
        assert span.end_time >= span.start_time


def test_request_span_has_a_timed_event_for_each_hook(
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry))
    roundtrip(server.server_address)
    (span,) = finished_spans(span_exporter, 1, wait_for)
    events = {event.name: event for event in span.events}
    for hook in REQUEST_HOOKS:
        assert hook in events, hook
        duration = events[hook].attributes["duration_s"]
        assert isinstance(duration, float) and duration >= 0
        assert span.start_time <= events[hook].timestamp <= span.end_time
    # the handler's hooks happen inside finish_request
    assert events["finish_request"].timestamp <= events["setup"].timestamp
    assert events["setup"].timestamp <= events["handle"].timestamp <= events["finish"].timestamp


def test_hook_spans_option_records_hooks_as_child_spans(
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    telemetry = runtime.Telemetry(
        registry=registry, tracer_provider=tracer_provider, hook_spans=True
    )
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry))
    roundtrip(server.server_address)
    wait_for(lambda: len(request_spans(span_exporter)) == 1, what="request span")
    (request,) = request_spans(span_exporter)
    children = {
        s.name: s
        for s in span_exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == request.context.span_id
    }
    for hook in REQUEST_HOOKS:
        assert hook in children, hook
        child = children[hook]
        assert child.context.trace_id == request.context.trace_id
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_failed_request_span_has_error_status_and_error_type(
    server_class: type[runtime.TCPServer],
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    json_logger: Any,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    server = serve(server_class(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger))
    roundtrip(server.server_address, b"boom\n")
    (span,) = finished_spans(span_exporter, 1, wait_for)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    exceptions = [e for e in span.events if e.name == "exception"]
    assert len(exceptions) == 1
    assert exceptions[0].attributes["exception.type"] == "ValueError"
    assert "handle_error" in {e.name for e in span.events}


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_request_span_is_current_inside_handle(
    server_class: type[runtime.TCPServer],
    telemetry: runtime.Telemetry,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    tracer = tracer_provider.get_tracer("application")

    class Traced(runtime.StreamRequestHandler):
        def handle(self) -> None:
            with tracer.start_as_current_span("application work"):
                self.wfile.write(self.rfile.readline())

    server = serve(server_class(("127.0.0.1", 0), Traced, telemetry=telemetry))
    roundtrip(server.server_address)
    roundtrip(server.server_address)
    wait_for(lambda: len(request_spans(span_exporter)) == 2, what="2 request spans")
    requests = {s.context.span_id: s for s in request_spans(span_exporter)}
    app_spans = [s for s in span_exporter.get_finished_spans() if s.name == "application work"]
    assert len(app_spans) == 2
    for app in app_spans:
        assert app.parent is not None, "the handler's span has no parent"
        parent = requests.get(app.parent.span_id)
        assert parent is not None, "the handler's span is not a child of a request span"
        assert app.context.trace_id == parent.context.trace_id
    assert {a.parent.span_id for a in app_spans if a.parent} == set(requests)


# -- isolation ----------------------------------------------------------------------


def test_two_servers_on_one_telemetry_with_different_names_do_not_collide(
    telemetry: runtime.Telemetry,
    registry: CollectorRegistry,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    alpha = serve(runtime.ThreadingTCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry,
                                             server_name="alpha"))  # fmt: skip
    beta = serve(runtime.ThreadingTCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry,
                                            server_name="beta"))  # fmt: skip
    roundtrip(alpha.server_address)
    for _ in range(2):
        roundtrip(beta.server_address)
    wait_for(lambda: metric(REQUESTS) == 3, what="3 requests")
    assert metric(REQUESTS, server="alpha", outcome="ok") == 1
    assert metric(REQUESTS, server="beta", outcome="ok") == 2
    assert metric(HOOK_COUNT, server="alpha", hook="handle") == 1
    assert metric(HOOK_COUNT, server="beta", hook="handle") == 2
    for name in ("alpha", "beta"):
        labels = {"server": name, "transport": "tcp"}
        assert registry.get_sample_value("socketserver_requests_in_flight", labels) == 0
        assert registry.get_sample_value("socketserver_workers_max", labels) == (
            runtime.ThreadingTCPServer.max_children
        )


def test_two_telemetry_objects_keep_separate_registries(
    serve: Any, wait_for: WaitFor
) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    one = serve(runtime.TCPServer(("127.0.0.1", 0), Echo,
                                  telemetry=runtime.Telemetry(registry=first)))  # fmt: skip
    two = serve(runtime.TCPServer(("127.0.0.1", 0), Echo))
    two.use_telemetry(runtime.Telemetry(registry=second))  # same class, same default name
    roundtrip(one.server_address)
    for _ in range(3):
        roundtrip(two.server_address)
    labels = {"server": "TCPServer", "transport": "tcp", "outcome": "ok"}
    wait_for(lambda: second.get_sample_value(REQUESTS, labels) == 3, what="3 requests")
    assert first.get_sample_value(REQUESTS, labels) == 1


# -- transports -----------------------------------------------------------------------


class DatagramEcho(runtime.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


def test_udp_server_metrics_are_labelled_udp(
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server = serve(runtime.UDPServer(("127.0.0.1", 0), DatagramEcho, telemetry=telemetry))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        for word in (b"one", b"two"):
            sock.sendto(word, server.server_address)
            assert sock.recv(100) == word.upper()
    wait_for(lambda: metric(REQUESTS, transport="udp", outcome="ok") == 2, what="2 datagrams")
    assert metric(REQUESTS, transport="tcp") == 0
    assert metric(HOOK_COUNT, transport="udp", hook="handle") == 2
    spans = finished_spans(span_exporter, 2, wait_for)
    assert {s.name for s in spans} == {"DatagramEcho udp"}
    assert all(s.attributes["network.transport"] == "udp" for s in spans)


def test_unix_stream_server_metrics_are_labelled_unix(
    telemetry: runtime.Telemetry,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
    short_tmp: Path,
) -> None:
    path = str(short_tmp / "echo.sock")
    server = serve(runtime.UnixStreamServer(path, Echo, telemetry=telemetry))
    assert roundtrip(path, b"over unix\n", family=socket.AF_UNIX) == b"over unix\n"
    wait_for(lambda: metric(REQUESTS, transport="unix", outcome="ok") == 1, what="1 request")
    assert metric(HOOK_COUNT, transport="unix", hook="handle") == 1
    assert server.transport == "unix"


def test_requests_work_without_telemetry(serve: Any, wait_for: WaitFor) -> None:
    server = serve(runtime.ThreadingTCPServer(("127.0.0.1", 0), Echo))
    assert roundtrip(server.server_address, b"plain\n") == b"plain\n"
    sync = serve(runtime.TCPServer(("127.0.0.1", 0), Echo))
    assert roundtrip(sync.server_address, b"plain\n") == b"plain\n"
    # the request records are still finished (and dropped) with no telemetry
    wait_for(lambda: sync.runtime_stats() == {"in_flight": 0}, what="sync request finished")
    wait_for(lambda: server.runtime_stats()["in_flight"] == 0, what="thread request finished")


def test_use_telemetry_binds_after_construction_and_none_unbinds(
    registry: CollectorRegistry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo))
    roundtrip(server.server_address)  # not counted anywhere
    wait_for(lambda: server.runtime_stats()["in_flight"] == 0, what="first request finished")
    server.use_telemetry(runtime.Telemetry(registry=registry))
    roundtrip(server.server_address)
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 1, what="1 counted request")
    wait_for(lambda: server.runtime_stats()["in_flight"] == 0, what="second request finished")
    server.use_telemetry(None)
    done = threading.Event()

    class Done(Echo):
        def finish(self) -> None:
            super().finish()
            done.set()

    server.RequestHandlerClass = Done
    roundtrip(server.server_address)
    assert done.wait(10)
    assert metric(HOOK_COUNT, hook="handle") == 1


# -- failures in the loop's own hooks ----------------------------------------------------


def test_verify_request_that_raises_is_counted_and_the_server_goes_on(
    telemetry: runtime.Telemetry,
    json_logger: Any,
    log_stream: io.StringIO,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    class Flaky(runtime.TCPServer):
        fail_next = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            if self.fail_next:
                self.fail_next = False
                raise PermissionError("cannot verify")
            return True

    server = serve(Flaky(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger))
    assert roundtrip(server.server_address) == b""
    assert roundtrip(server.server_address) == b"hello\n"
    wait_for(lambda: metric(REQUESTS) == 2, what="2 requests")
    assert metric("socketserver_errors_total", hook="verify_request",
                  error_type="PermissionError") == 1  # fmt: skip
    assert metric(REQUESTS, outcome="error") == 1
    (error,) = [line for line in _log_lines(log_stream) if line.get("level") == "error"]
    assert error["hook"] == "verify_request"


def test_get_request_oserror_is_counted_and_the_server_goes_on(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    class Unlucky(runtime.TCPServer):
        failures = 1

        def get_request(self) -> Any:
            if self.failures:
                self.failures -= 1
                self.socket.accept()[0].close()  # take the connection, then fail like EMFILE
                raise OSError(24, "Too many open files")
            return super().get_request()

    server = serve(Unlucky(("127.0.0.1", 0), Echo, telemetry=telemetry))
    assert roundtrip(server.server_address) == b""
    assert roundtrip(server.server_address) == b"hello\n"
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 1, what="next request")
    assert metric("socketserver_errors_total", hook="get_request", error_type="OSError") == 1
    assert metric(HOOK_COUNT, hook="get_request") == 2


def test_accept_backlog_gives_up_when_get_request_keeps_failing(
    telemetry: runtime.Telemetry,
) -> None:
    class OutOfFds(runtime.TCPServer):
        calls = 0

        def get_request(self) -> Any:
            self.calls += 1
            if self.calls > 10_000:  # (only so that the buggy version ends at all)
                raise BlockingIOError
            raise OSError(24, "Too many open files")

    with OutOfFds(("127.0.0.1", 0), Echo, telemetry=telemetry) as server:
        server.accept_backlog()
        assert server.calls < 10_000, "accept_backlog retried a failing accept() forever"


def test_error_type_label_values_are_bounded(
    telemetry: runtime.Telemetry,
    registry: CollectorRegistry,
    json_logger: Any,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    kinds = [type(f"Error{n}", (Exception,), {}) for n in range(60)]

    class Varied(runtime.StreamRequestHandler):
        def handle(self) -> None:
            raise kinds[int(self.rfile.readline())]()

    server = serve(runtime.TCPServer(("127.0.0.1", 0), Varied, telemetry=telemetry,
                                     logger=json_logger))  # fmt: skip
    for n in range(len(kinds)):
        roundtrip(server.server_address, b"%d\n" % n)
    wait_for(lambda: metric(REQUESTS, outcome="error") == 60, what="60 errors")
    assert metric("socketserver_errors_total") == 60  # every error counted...
    values = {
        s.labels["error_type"]
        for family in registry.collect()
        for s in family.samples
        if s.name == "socketserver_errors_total"
    }
    assert len(values) <= 51  # ...under a bounded set of label values
    assert metric("socketserver_errors_total", error_type="other") == 60 - (len(values) - 1)


def test_no_metric_label_carries_a_peer_address(
    telemetry: runtime.Telemetry,
    registry: CollectorRegistry,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server = serve(runtime.ThreadingTCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry))
    with socket.create_connection(server.server_address, timeout=10) as sock:
        port = str(sock.getsockname()[1])
        sock.sendall(b"x\n")
        assert sock.recv(10) == b"x\n"
    wait_for(lambda: metric(REQUESTS) == 1, what="1 request")
    for family in registry.collect():
        for sample in family.samples:
            for value in sample.labels.values():
                assert "127.0.0.1" not in value and value != port, sample


def test_service_actions_that_raise_are_counted_and_the_loop_goes_on(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    class Housekeeping(runtime.TCPServer):
        failures = 2

        def service_actions(self) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("housekeeping failed")

    server = serve(Housekeeping(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=json_logger))
    wait_for(lambda: server.failures == 0, what="service_actions ran twice")
    assert roundtrip(server.server_address) == b"hello\n"
    assert metric("socketserver_errors_total", hook="service_actions", error_type="OSError") == 2


# -- exemplars and the access log ----------------------------------------------------------


def test_request_duration_histogram_has_a_trace_id_exemplar(
    telemetry: runtime.Telemetry,
    registry: CollectorRegistry,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    wait_for: WaitFor,
) -> None:
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry))
    roundtrip(server.server_address)
    (span,) = finished_spans(span_exporter, 1, wait_for)
    exemplars = [
        s.exemplar
        for family in registry.collect()
        for s in family.samples
        if s.name == "socketserver_request_duration_seconds_bucket" and s.exemplar is not None
    ]
    assert [e.labels.get("trace_id") for e in exemplars] == [format(span.context.trace_id, "032x")]


@pytest.mark.parametrize("hook", ["get_request", "handle", "shutdown_request"])
def test_hook_latency_carries_the_exemplar_in_openmetrics(
    telemetry: runtime.Telemetry,
    span_exporter: InMemorySpanExporter,
    serve: Any,
    wait_for: WaitFor,
    hook: str,
) -> None:
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry))
    roundtrip(server.server_address)
    (span,) = finished_spans(span_exporter, 1, wait_for)
    body, content_type = telemetry.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    trace_id = format(span.context.trace_id, "032x")
    lines = [
        line
        for line in body.decode().splitlines()
        if line.startswith("socketserver_hook_duration_seconds_bucket")
        and f'hook="{hook}"' in line
        and "# {" in line
    ]
    assert len(lines) == 1, lines
    assert f'trace_id="{trace_id}"' in lines[0]


def test_one_access_log_line_per_request(
    telemetry: runtime.Telemetry,
    log_stream: io.StringIO,
    json_logger: Any,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server = serve(runtime.TCPServer(("127.0.0.1", 0), Echo, telemetry=telemetry,
                                     logger=json_logger))  # fmt: skip
    with socket.create_connection(server.server_address, timeout=10) as sock:
        client = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(b"x\n")
        assert sock.recv(10) == b"x\n"
    wait_for(lambda: metric(REQUESTS) == 1, what="1 request")
    lines = [line for line in _log_lines(log_stream) if client in json.dumps(line)]
    assert len(lines) == 1
    assert "ok" in lines[0].values()
    assert any("duration" in key for key in lines[0])


class _Upper(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("batch", "turns_range"), [(16, (1, 2)), (1, (10, 11))])
def test_queued_connections_are_taken_in_a_batch_per_loop_turn(
    batch: int, turns_range: tuple[int, int]
) -> None:
    """With ten connections queued, one wake of the loop serves them all (``accept_batch``)."""
    turns: list[int] = []

    class Server(runtime.TCPServer):  # synchronous: each request is handled in the loop
        accept_batch = batch
        request_queue_size = 16  # (the standard 5 would not let ten wait)

        def service_actions(self) -> None:  # once per loop turn
            turns.append(1)

    server = Server(("127.0.0.1", 0), _Upper)
    clients = []
    for i in range(10):  # queued in the kernel before the loop starts
        sock = socket.create_connection(server.server_address, timeout=10)
        sock.sendall(b"line %d\n" % i)
        clients.append(sock)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 5})
    thread.start()
    try:
        replies = [sock.makefile("rb").readline() for sock in clients]
        assert replies == [b"LINE %d\n" % i for i in range(10)]
    finally:
        server.shutdown()  # returns once the loop has stopped
        thread.join()
        for sock in clients:
            sock.close()
    assert turns_range[0] <= len(turns) <= turns_range[1]
    assert server.socket.gettimeout() is None  # the listener is blocking again, as it was
    server.server_close()
