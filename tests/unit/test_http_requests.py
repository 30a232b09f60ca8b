"""HTTP requests as the unit: each request of an http.server handler measured, traced and logged.

A socketserver "request" is a connection; for ``http.server`` handlers (and so ``wsgiref``
and ``xmlrpc.server``) each HTTP request on it, keep-alive and pipelined included, gets
its own ``http_server_request_duration_seconds`` observation (method, status, route,
error_type), its own SERVER span whose parent is the caller's ``traceparent``, and its own
access line. A 5xx or a handler that raises is an error; a 4xx is not.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import http.server
import io
import json
import os
import signal
import socket
import threading
import wsgiref.simple_server
import xmlrpc.client
import xmlrpc.server
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

import runtime
from runtime.telemetry.metrics import MAX_ROUTES

DURATION = "http_server_request_duration_seconds"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/":
            runtime.set_route("/")
            self.reply(200, b"hello\n")
        elif path.startswith("/users/"):
            runtime.set_route("/users/{id}")
            runtime.set_attributes(user_id=path[7:])
            self.reply(200, b"user\n")
        elif path == "/error":
            self.send_error(500)
        elif path == "/raise-after-status":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            raise ValueError("failed after the status line")
        elif path == "/trace":
            server: Any = self.server
            server.seen.append(trace.get_current_span().get_span_context())
            with server.app_tracer.start_as_current_span("app work"):
                self.server.logger.info("in the application")  # type: ignore[attr-defined]
            self.reply(200, b"traced\n")
        elif path == "/raw-route":  # a route set from raw input, by mistake
            runtime.set_route(self.path)
            self.reply(200, b"ok\n")
        else:
            self.send_error(404)

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http_server(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any, tracer_provider: Any
) -> Callable[..., Any]:
    def make(handler: type = Handler, base: type = runtime.ThreadingTCPServer, **kw: Any) -> Any:
        server = base(("127.0.0.1", 0), handler, telemetry=telemetry, logger=json_logger,
                      server_name="web", **kw)  # fmt: skip
        server.seen = []
        server.app_tracer = tracer_provider.get_tracer("app")  # the application's own spans
        return serve(server)

    return make


def series(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of *name* (suffix included), as (labels, value)."""
    return [
        (dict(s.labels), s.value)
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    ]


def count(registry: CollectorRegistry, **labels: str) -> float:
    return sum(
        value
        for got, value in series(registry, DURATION + "_count")
        if all(got.get(k) == v for k, v in labels.items())
    )


def lines(log_stream: io.StringIO, event: str = "request") -> list[dict[str, Any]]:
    out = []
    for line in log_stream.getvalue().splitlines():
        entry = json.loads(line)
        if entry.get("event") == event:
            out.append(entry)
    return out


def keepalive(port: int, requests: list[tuple[str, str, dict[str, str]]]) -> list[int]:
    """Send *requests* on one connection; return their statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    try:
        for method, path, headers in requests:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


def request_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if "http.request.method" in s.attributes]


# -- one unit per HTTP request ----------------------------------------------------------


def test_keepalive_requests_are_measured_each(
    http_server: Callable[..., Any], registry: CollectorRegistry, metric: Any, wait_for: Any
) -> None:
    server = http_server()
    port = server.server_address[1]
    statuses = keepalive(port, [("GET", "/", {})] * 5 + [("POST", "/", {})])
    assert statuses == [200] * 5 + [501]
    wait_for(lambda: metric("socketserver_requests_total") == 1)  # one connection
    assert count(registry, http_request_method="GET", http_response_status_code="200",
                 http_route="/", error_type="", server="web") == 5  # fmt: skip
    # http.server's own answer to a method it has no do_ for: a 5xx, the server's error
    assert count(registry, http_request_method="POST", http_response_status_code="501",
                 error_type="501") == 1  # fmt: skip
    assert metric("socketserver_requests_total", outcome="ok") == 1  # the connection is fine


def test_5xx_is_an_error_4xx_is_not(
    http_server: Callable[..., Any], registry: CollectorRegistry, span_exporter: Any,
    wait_for: Any,
) -> None:  # fmt: skip
    server = http_server()
    assert keepalive(server.server_address[1], [("GET", "/error", {}), ("GET", "/nope", {})]) == [
        500,
        404,
    ]
    wait_for(lambda: len(request_spans(span_exporter)) == 2)
    assert count(registry, http_response_status_code="500", error_type="500") == 1
    assert count(registry, http_response_status_code="500", error_type="") == 0
    assert count(registry, http_response_status_code="404", error_type="") == 1
    spans = {s.attributes["http.response.status_code"]: s for s in request_spans(span_exporter)}
    assert spans[500].status.status_code is StatusCode.ERROR
    assert spans[500].attributes["error.type"] == "500"
    assert spans[404].status.status_code is StatusCode.UNSET
    assert "error.type" not in spans[404].attributes


def test_a_handler_that_raises_after_its_status_is_counted_once(
    http_server: Callable[..., Any], registry: CollectorRegistry, metric: Any, wait_for: Any
) -> None:
    server = http_server()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("GET", "/raise-after-status")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()  # the body never came: the connection was closed
    conn.close()
    wait_for(lambda: metric("socketserver_requests_total") == 1)
    samples = [(labels, v) for labels, v in series(registry, DURATION + "_count") if v]
    assert samples == [
        (
            {"server": "web", "http_request_method": "GET", "http_response_status_code": "200",
             "http_route": "", "error_type": "ValueError"},
            1.0,
        )
    ]  # fmt: skip


def test_pipelined_requests_are_measured_each(
    http_server: Callable[..., Any], registry: CollectorRegistry, wait_for: Any
) -> None:
    server = http_server()
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3
            + b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 3 and data.count(b"HTTP/1.1 404") == 1
    wait_for(lambda: count(registry) == 4)
    assert count(registry, http_response_status_code="200") == 3


# -- traces: the caller's context continues -----------------------------------------------


def test_the_callers_traceparent_is_the_request_spans_parent(
    http_server: Callable[..., Any], span_exporter: InMemorySpanExporter, log_stream: Any,
    wait_for: Any,
) -> None:  # fmt: skip
    server = http_server()
    headers = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "User-Agent": "test-agent/1",
        "baggage": "tenant=acme",
    }
    assert keepalive(server.server_address[1], [("GET", "/trace?secret=1", headers)]) == [200]
    wait_for(lambda: len(request_spans(span_exporter)) == 1)
    wait_for(lambda: any(s.name == "Handler tcp" for s in span_exporter.get_finished_spans()))
    (span,) = request_spans(span_exporter)
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN
    assert span.parent.is_remote
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == "/trace"  # never the query
    assert span.attributes["url.scheme"] == "http"
    assert span.attributes["user_agent.original"] == "test-agent/1"
    assert span.attributes["network.protocol.version"] == "1.1"
    assert span.attributes["client.address"] == "127.0.0.1"
    assert span.attributes["http.response.status_code"] == 200
    # the connection's span is linked, not the parent: the caller's trace stays the caller's
    connection = [s for s in span_exporter.get_finished_spans() if s.name == "Handler tcp"]
    assert len(connection) == 1
    assert [link.context.span_id for link in span.links] == [connection[0].context.span_id]
    assert connection[0].context.trace_id != span.context.trace_id
    # current while do_GET runs: the application's span is its child, its lines carry it
    (current,) = server.seen
    assert current.span_id == span.context.span_id
    (app,) = [s for s in span_exporter.get_finished_spans() if s.name == "app work"]
    assert app.parent is not None and app.parent.span_id == span.context.span_id
    (line,) = lines(log_stream, "in the application")
    assert line["trace_id"] == CALLER_TRACE
    (access,) = lines(log_stream)
    assert access["trace_id"] == CALLER_TRACE
    assert access["span_id"] == format(span.context.span_id, "016x")


def test_without_a_traceparent_each_request_starts_its_own_trace(
    http_server: Callable[..., Any], span_exporter: InMemorySpanExporter, wait_for: Any
) -> None:
    server = http_server()
    keepalive(server.server_address[1], [("GET", "/", {}), ("GET", "/users/7", {})])
    wait_for(lambda: len(request_spans(span_exporter)) == 2)
    first, second = request_spans(span_exporter)
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id
    assert first.name == "GET /" and second.name == "GET /users/{id}"
    assert second.attributes["http.route"] == "/users/{id}"
    assert second.attributes["user_id"] == "7"  # runtime.set_attributes


# -- access lines ------------------------------------------------------------------------


def test_one_access_line_per_request_and_none_on_stderr(
    http_server: Callable[..., Any], log_stream: io.StringIO, capsys: Any, wait_for: Any,
    metric: Any,
) -> None:  # fmt: skip
    class Plain(http.server.BaseHTTPRequestHandler):  # http.server's own log_message
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.startswith("/missing"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = http_server(Plain)
    port = server.server_address[1]
    headers = {"User-Agent": "agent/2"}
    assert keepalive(port, [("GET", "/a?token=secret", headers), ("GET", "/missing", headers)]) == [
        200,
        404,
    ]
    wait_for(lambda: metric("socketserver_requests_total") == 1)
    access = lines(log_stream)
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("GET", "/a", 200),
        ("GET", "/missing", 404),
    ]
    first = access[0]
    assert first["user_agent"] == "agent/2"
    assert first["client"].startswith("127.0.0.1:")
    assert first["bytes_out"] > 2 and first["duration_s"] >= 0
    assert "secret" not in log_stream.getvalue()
    assert "outcome" not in first  # ok
    # http.server's text lines: structured, through the runtime's logger, not stderr
    assert capsys.readouterr().err == ""
    (error_line,) = lines(log_stream, "code 404, message Not Found")
    assert error_line["level"] == "info" and error_line["server"] == "web"


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),  # refused before parsing
        (b"GET /secret HTTP/9.9\r\n\r\n", 505),  # refused while parsing the line
    ],
)
def test_a_refused_request_line_after_a_kept_alive_request_has_no_path(
    http_server: Callable[..., Any], log_stream: io.StringIO, metric: Any, wait_for: Any,
    bad: bytes, status: int,
) -> None:  # fmt: skip
    """The access line of a request http.server refuses before it knows the path has
    none, not the previous request's on the same connection."""
    server = http_server()
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"GET /users/7 HTTP/1.1\r\nHost: x\r\n\r\n" + bad)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # (the error page: Python 3.10 answers a bad version line without a status line)
    assert data.startswith(b"HTTP/1.1 200") and b"Error code: %d" % status in data
    wait_for(lambda: metric("socketserver_requests_total") == 1)
    access = lines(log_stream)
    assert [(a["path"], a["status"]) for a in access] == [("/users/7", 200), ("", status)]


def test_a_handler_that_silences_log_message_stays_silent(
    http_server: Callable[..., Any], log_stream: io.StringIO, capsys: Any, metric: Any,
    wait_for: Any,
) -> None:  # fmt: skip
    class Quiet(Handler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            self.server.quiet.append(format % args)  # type: ignore[attr-defined]

    server = http_server(Quiet)
    server.quiet = []
    keepalive(server.server_address[1], [("GET", "/nope", {})])
    wait_for(lambda: metric("socketserver_requests_total") == 1)
    assert server.quiet == ["code 404, message Not Found"]  # its own log_message ran
    assert capsys.readouterr().err == ""
    assert len(lines(log_stream)) == 1  # and the access line


# -- cardinality ---------------------------------------------------------------------------


class EveryPath(Handler):
    """200 for every GET path; the raw path as the route when asked (a bug a handler may have)."""

    def do_GET(self) -> None:
        if self.path.startswith("/raw-route"):
            runtime.set_route(self.path)
        self.reply(200, b"ok\n")


def test_clients_cannot_mint_series(
    http_server: Callable[..., Any], registry: CollectorRegistry, metric: Any, wait_for: Any
) -> None:
    server = http_server(EveryPath)
    sock = reader = None
    connections = 0
    for i in range(10_000):
        if sock is None:
            sock = socket.create_connection(server.server_address, timeout=30)
            reader = sock.makefile("rb")
            connections += 1
        assert reader is not None
        method = "GET" if i % 7 else f"BREW{i % 13}"  # unknown methods: 501, and closed
        path = f"/path/{i}" if i % 2 else f"/raw-route?i={i}"
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status = reader.readline().split()[1]
        assert status == (b"200" if method == "GET" else b"501")
        length, close = 0, False
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            close = close or (name.lower() == b"connection" and b"close" in value.lower())
        reader.read(length)
        if close:
            reader.close()
            sock.close()
            sock = reader = None
    if sock is not None and reader is not None:
        reader.close()
        sock.close()
    wait_for(lambda: metric("socketserver_requests_total") == connections)
    assert count(registry) == 10_000
    samples = series(registry, DURATION + "_count")
    methods = {labels["http_request_method"] for labels, _ in samples}
    assert methods == {"GET", "_OTHER"}
    routes = {labels["http_route"] for labels, _ in samples}
    # the handler set raw paths as routes: capped, the rest is "_OTHER"
    assert len(routes) <= MAX_ROUTES + 2 and "_OTHER" in routes
    assert len(samples) < 2 * (MAX_ROUTES + 5)
    text = "".join(str(labels) for labels, _ in samples)
    assert "/path/" not in text


# -- wsgiref and xmlrpc.server -------------------------------------------------------------


def test_wsgiref_status_is_the_applications(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any, registry: CollectorRegistry,
    log_stream: io.StringIO, metric: Any, wait_for: Any,
) -> None:  # fmt: skip
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        path = environ["PATH_INFO"]
        if path == "/busy":
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return iter([b"busy\n"])
        if path == "/boom":
            raise RuntimeError("application failed")
        runtime.set_route("/hello")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return iter([b"hello\n"])

    cls = runtime.instrument(wsgiref.simple_server.WSGIServer, "thread")
    server = cls(("127.0.0.1", 0), wsgiref.simple_server.WSGIRequestHandler,
                 telemetry=telemetry, logger=json_logger, server_name="wsgi")  # fmt: skip
    server.set_app(app)
    serve(server)
    port = server.server_address[1]
    for path, expected in (("/hello", 200), ("/busy", 503), ("/boom", 500)):
        assert keepalive(port, [("GET", path, {})]) == [expected]
    wait_for(lambda: metric("socketserver_requests_total") == 3)
    assert count(registry, http_response_status_code="200", http_route="/hello", error_type="") == 1
    assert count(registry, http_response_status_code="503", error_type="503") == 1
    assert count(registry, http_response_status_code="500", error_type="500") == 1
    hello = [a for a in lines(log_stream) if a["path"] == "/hello"]
    assert len(hello) == 1 and hello[0]["status"] == 200 and hello[0]["route"] == "/hello"
    bodies = series(registry, "http_server_response_body_size_bytes_sum")
    assert ({"server": "wsgi", "http_request_method": "GET", "http_route": "/hello"}, 6.0) in bodies


class Maths:
    def double(self, x: int) -> int:
        return x * 2


def test_xmlrpc_method_is_the_route_and_a_fault_is_an_error(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any, registry: CollectorRegistry,
    span_exporter: InMemorySpanExporter, metric: Any, wait_for: Any,
) -> None:  # fmt: skip
    def fails() -> None:
        raise xmlrpc.client.Fault(7, "no")

    cls = runtime.instrument(xmlrpc.server.SimpleXMLRPCServer, "thread")
    server = cls(("127.0.0.1", 0), logRequests=False, telemetry=telemetry, logger=json_logger,
                 server_name="rpc")  # fmt: skip
    server.register_introspection_functions()
    server.register_function(fails, "fails")
    server.register_instance(Maths())
    serve(server)
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.server_address[1]}/")
    assert "fails" in proxy.system.listMethods()
    assert proxy.double(21) == 42
    with pytest.raises(xmlrpc.client.Fault):
        proxy.fails()
    with pytest.raises(xmlrpc.client.Fault):
        proxy.no_such_method_1234()
    wait_for(lambda: count(registry) == 4)
    assert count(registry, http_route="system.listMethods", error_type="") == 1
    assert count(registry, http_route="double", error_type="") == 1
    assert count(registry, http_route="fails", error_type="Fault") == 1
    # a name the client made up is no route (a client cannot mint series), still an error
    assert count(registry, http_route="", http_response_status_code="200") == 1
    assert count(registry, http_route="", error_type="Exception") == 1
    names = {s.name for s in request_spans(span_exporter)}
    assert {"POST system.listMethods", "POST double", "POST fails", "POST"} == names


# -- operations of other protocols ----------------------------------------------------------


class Commands(runtime.StreamRequestHandler):
    """A line protocol: each line a command, each command an operation."""

    def handle(self) -> None:
        for line in self.rfile:
            command, _, arg = line.decode().strip().partition(" ")
            if command == "QUIT":
                return
            try:
                with runtime.operation(command, key=arg):
                    if command == "FAIL":
                        raise KeyError(arg)
                    self.wfile.write(f"+{command}\n".encode())
            except KeyError:
                self.wfile.write(b"-ERR\n")


def test_marked_operations_of_a_line_protocol(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any, registry: CollectorRegistry,
    span_exporter: InMemorySpanExporter, log_stream: io.StringIO, metric: Any, wait_for: Any,
) -> None:  # fmt: skip
    server = serve(runtime.ThreadingTCPServer(("127.0.0.1", 0), Commands, telemetry=telemetry,
                                              logger=json_logger, server_name="kv"))  # fmt: skip
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"GET a\nSET b\nGET c\nFAIL d\nQUIT\n")
        reader = sock.makefile("rb")
        assert [reader.readline() for _ in range(4)] == [b"+GET\n", b"+SET\n", b"+GET\n", b"-ERR\n"]
        reader.close()
    wait_for(lambda: metric("socketserver_requests_total") == 1)
    ops = {
        (labels["operation"], labels["outcome"]): value
        for labels, value in series(registry, "socketserver_operation_duration_seconds_count")
    }
    assert ops == {("GET", "ok"): 2, ("SET", "ok"): 1, ("FAIL", "error"): 1}
    connection = next(s for s in span_exporter.get_finished_spans() if s.name == "Commands tcp")
    spans = [s for s in span_exporter.get_finished_spans() if s.name in ("GET", "SET", "FAIL")]
    assert len(spans) == 4
    assert all(s.parent is not None and s.parent.span_id == connection.context.span_id
               for s in spans)  # fmt: skip
    fail = next(s for s in spans if s.name == "FAIL")
    assert fail.status.status_code is StatusCode.ERROR and fail.attributes["key"] == "d"
    access = lines(log_stream, "operation")
    assert [(a["operation"], a["outcome"]) for a in access] == [
        ("GET", "ok"), ("SET", "ok"), ("GET", "ok"), ("FAIL", "error"),
    ]  # fmt: skip
    assert all(a["trace_id"] == format(connection.context.trace_id, "032x") for a in access)
    (conn_line,) = lines(log_stream)
    assert conn_line["operations"] == 4


def test_operation_outside_a_handler_is_an_error() -> None:
    with pytest.raises(RuntimeError), runtime.operation("GET"):
        pass
    with pytest.raises(RuntimeError):
        runtime.set_attributes(a=1)
    runtime.set_route("/x")  # nothing to name: does nothing


# -- fork mode ------------------------------------------------------------------------------


def test_fork_mode_requests_reach_the_parents_metrics_and_traces(
    http_server: Callable[..., Any], registry: CollectorRegistry,
    span_exporter: InMemorySpanExporter, metric: Any, wait_for: Any,
) -> None:  # fmt: skip
    server = http_server(base=runtime.ForkingTCPServer)
    # The client is in this process, so each child holds a copy of its socket: the
    # server side closes each connection (Connection: close, send_error) to end the child.
    traced = (
        f"GET / HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n\r\n"
        "GET /users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    replies = [
        exchange(server.server_address, traced),
        exchange(server.server_address, "GET /error HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]
    assert replies[0].count(b"HTTP/1.1 200") == 2 and b"HTTP/1.1 500" in replies[1]
    wait_for(lambda: metric("socketserver_requests_total") == 2)
    assert count(registry, http_route="/", http_response_status_code="200") == 1
    assert count(registry, http_response_status_code="500", error_type="500") == 1
    assert count(registry, http_route="/users/{id}") == 1
    wait_for(lambda: len(request_spans(span_exporter)) == 3)
    first = next(s for s in request_spans(span_exporter) if s.name == "GET /")
    assert format(first.context.trace_id, "032x") == CALLER_TRACE


class BodyReader(Handler):
    def do_PUT(self) -> None:  # in progress until the client sends the body
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(200, body)
        self.close_connection = True  # the child ends with its connection


def test_fork_mode_counts_the_requests_its_children_serve_in_progress(
    http_server: Callable[..., Any], metric: Any, wait_for: Any
) -> None:
    """``http_server_active_requests`` counts a forked child's request while it runs:
    the parent never sees the request start otherwise."""
    server = http_server(BodyReader, base=runtime.ForkingTCPServer)
    socks = [socket.create_connection(server.server_address, timeout=10) for _ in range(2)]
    try:
        for sock in socks:  # the headers: each child begins a PUT and waits for its body
            sock.sendall(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        wait_for(lambda: metric("http_server_active_requests", http_request_method="PUT") == 2)
        socks[0].sendall(b"ok")
        assert socks[0].recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: metric("http_server_active_requests", http_request_method="PUT") == 1)
    finally:
        for sock in socks:  # each child holds copies of these sockets: shut down, not close
            sock.shutdown(socket.SHUT_WR)  # the other child's read ends: its request too
            sock.close()
    wait_for(lambda: metric("socketserver_requests_total") == 2)
    assert metric("http_server_active_requests", http_request_method="PUT") == 0


def test_fork_mode_counts_every_child_after_max_children_grew(
    http_server: Callable[..., Any], metric: Any, wait_for: Any
) -> None:
    server = http_server(BodyReader, base=runtime.ForkingTCPServer)
    server.max_children = 1
    assert exchange(server.server_address, "PUT / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
    wait_for(lambda: metric("socketserver_requests_total") == 1)
    server.max_children = 3  # more children than the first one's shared bytes
    socks = [socket.create_connection(server.server_address, timeout=10) for _ in range(3)]
    try:
        for sock in socks:
            sock.sendall(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        wait_for(lambda: metric("http_server_active_requests", http_request_method="PUT") == 3)
    finally:
        for sock in socks:
            sock.shutdown(socket.SHUT_WR)
            sock.close()
    wait_for(lambda: metric("socketserver_requests_total") == 4)


def test_fork_mode_a_child_killed_mid_request_is_no_longer_counted(
    http_server: Callable[..., Any], metric: Any, wait_for: Any
) -> None:
    server = http_server(BodyReader, base=runtime.ForkingTCPServer)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        wait_for(lambda: metric("http_server_active_requests", http_request_method="PUT") == 1)
        (pid,) = server.child_pids()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: metric("socketserver_requests_total", outcome="error") == 1)
        assert metric("http_server_active_requests", http_request_method="PUT") == 0


def exchange(address: Any, data: str) -> bytes:
    """Send *data*, read until the server closes."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data.encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_in_flight_requests_are_counted(
    http_server: Callable[..., Any], registry: CollectorRegistry, metric: Any, wait_for: Any
) -> None:
    release = threading.Event()
    entered = threading.Event()

    class Slow(Handler):
        def do_PUT(self) -> None:
            entered.set()
            release.wait(10)
            self.reply(200, b"done\n")

    server = http_server(Slow)
    result: list[int] = []
    client = threading.Thread(
        target=lambda: result.extend(keepalive(server.server_address[1], [("PUT", "/", {})]))
    )
    client.start()
    try:
        assert entered.wait(10)
        assert metric("http_server_active_requests", http_request_method="PUT") == 1
    finally:
        release.set()
        client.join(10)
    assert result == [200]
    wait_for(lambda: metric("http_server_active_requests", http_request_method="PUT") == 0)


def test_simple_http_request_handler_files_and_404s(
    http_server: Callable[..., Any], registry: CollectorRegistry, log_stream: io.StringIO,
    metric: Any, wait_for: Any, tmp_path: Any,
) -> None:  # fmt: skip
    """The standard library's file server, unchanged: its bytes and statuses, per request."""
    (tmp_path / "hello.txt").write_bytes(b"x" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http_server(handler)
    assert keepalive(server.server_address[1], [("GET", "/hello.txt", {}), ("GET", "/no", {})]) == [
        200,
        404,
    ]
    wait_for(lambda: count(registry) == 2)
    assert count(registry, http_response_status_code="200", error_type="") == 1
    assert count(registry, http_response_status_code="404", error_type="") == 1
    bodies = dict(
        (labels["http_route"], value)
        for labels, value in series(registry, "http_server_response_body_size_bytes_sum")
    )
    assert bodies[""] >= 1000  # the file's bytes (and the 404 page's), measured as written
    access = {a["path"]: a for a in lines(log_stream)}
    assert access["/hello.txt"]["status"] == 200 and access["/hello.txt"]["bytes_out"] > 1000


# -- the Date header, formatted once a second ---------------------------------------------


def test_the_date_header_is_the_standard_librarys_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formatted once a second, the same string http.server makes each response."""
    from runtime import _http

    stdlib = http.server.BaseHTTPRequestHandler.__new__(http.server.BaseHTTPRequestHandler)
    clock = [1_700_000_000.0]
    monkeypatch.setattr(_http, "time", lambda: clock[0])
    seen = []
    for now in (1_700_000_000.0, 1_700_000_000.4, 1_700_000_000.999, 1_700_000_001.0,
                1_700_000_059.5, 1_700_003_600.2):  # fmt: skip
        clock[0] = now
        got = _http.date_time_string()
        assert got == stdlib.date_time_string(now), now
        seen.append(got)
    assert seen[0] == seen[1] == seen[2] != seen[3]  # a new string at each new second
    # With a timestamp (Last-Modified), it is the standard one
    assert _http.date_time_string(86400.5) == stdlib.date_time_string(86400.5)


def test_a_handlers_own_date_time_string_is_kept(http_server: Callable[..., Any]) -> None:
    class OwnDate(Handler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return "the handler's own"

    server = http_server(OwnDate)
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.getheader("Date") == "the handler's own"


def test_the_date_header_of_a_served_response_is_now(http_server: Callable[..., Any]) -> None:
    server = http_server()
    before = email.utils.formatdate(usegmt=True)
    statuses_and_dates = []
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            statuses_and_dates.append((response.status, response.getheader("Date")))
    finally:
        conn.close()
    after = email.utils.formatdate(usegmt=True)
    for status, date in statuses_and_dates:
        assert status == 200
        stamp = email.utils.parsedate_to_datetime(date).timestamp()
        low = email.utils.parsedate_to_datetime(before).timestamp()
        high = email.utils.parsedate_to_datetime(after).timestamp()
        assert low <= stamp <= high, (before, date, after)
