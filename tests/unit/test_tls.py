"""TLS for stream servers: real handshakes against a CA the test makes (trustme).

The handshake runs on the worker that serves the connection, within the header time-out;
one that fails (a plain-text client, a missing, unknown or expired client certificate)
closes the connection, is counted (rejected, reason tls_handshake) and logged at info, and
never stops the accept loop. The span says which protocol and cipher were negotiated.
"""

from __future__ import annotations

import datetime
import io
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from handlers import OkHandler

import runtime


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def client_context(ca: trustme.CA, cert: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


class Echo(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.fixture
def tls_server(telemetry: runtime.Telemetry, json_logger: Any, serve: Any) -> Callable[..., Any]:
    def make(context: ssl.SSLContext, handler: type = Echo, **attrs: Any) -> Any:
        base = attrs.pop("base", runtime.ThreadingTCPServer)
        cls = type("Server", (base,), {"header_timeout": 1.0, **attrs})
        return serve(cls(("127.0.0.1", 0), handler, telemetry=telemetry, logger=json_logger,
                         ssl_context=context))  # fmt: skip

    return make


def _echo(address: Any, context: ssl.SSLContext, line: bytes = b"hello\n") -> bytes:
    raw = socket.create_connection(address, timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(line)
        return tls.makefile("rb").readline()


def _lines(log_stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, log_stream.getvalue().splitlines()) if e["event"] == event]


@pytest.mark.parametrize("base", [runtime.ThreadingTCPServer, runtime.ForkingTCPServer])
def test_a_real_handshake_and_its_span(
    tls_server: Callable[..., Any], server_context: ssl.SSLContext, ca: trustme.CA,
    span_exporter: Any, metric: Any, wait_for: Any, base: type,
) -> None:  # fmt: skip
    server = tls_server(server_context, base=base)
    assert _echo(server.server_address, client_context(ca)) == b"hello\n"
    wait_for(lambda: metric("socketserver_requests_total", outcome="ok") == 1)
    wait_for(lambda: len(span_exporter.get_finished_spans()) == 1)
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes["tls.protocol.version"] in ("TLSv1.2", "TLSv1.3")
    assert span.attributes["tls.cipher"]
    assert metric("socketserver_hook_duration_seconds_count", hook="tls_handshake") == 1


def test_failed_handshakes_are_refused_counted_and_logged(
    tls_server: Callable[..., Any], server_context: ssl.SSLContext, ca: trustme.CA,
    metric: Any, wait_for: Any, log_stream: io.StringIO,
) -> None:  # fmt: skip
    server = tls_server(server_context)
    with socket.create_connection(server.server_address, timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
        assert plain.recv(100) == b""  # closed
    other = trustme.CA()  # a client that does not trust the server's CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _echo(server.server_address, client_context(other))
    wait_for(lambda: metric("socketserver_requests_rejected_total", reason="tls_handshake") == 2)
    assert metric("socketserver_errors_total") == 0  # a client's mistake, not the server's
    (line, *_) = _lines(log_stream, "TLS handshake failed")
    assert line["level"] == "info" and line["reason"] == "HTTP_REQUEST"
    assert _echo(server.server_address, client_context(ca)) == b"hello\n"  # still serving


def test_client_certificates(
    tls_server: Callable[..., Any], server_context: ssl.SSLContext, ca: trustme.CA,
    metric: Any, wait_for: Any,
) -> None:  # fmt: skip
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_context)
    server = tls_server(server_context)
    good = ca.issue_cert("client@example.test")
    assert _echo(server.server_address, client_context(ca, good)) == b"hello\n"
    yesterday = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    expired = ca.issue_cert(
        "client@example.test", not_before=yesterday - datetime.timedelta(days=30),
        not_after=yesterday,
    )  # fmt: skip
    stranger = trustme.CA().issue_cert("client@example.test")
    for refused, cert in enumerate((None, expired, stranger), start=1):
        # TLS 1.3 sends the alert after the client's handshake returned: it shows on read.
        try:
            reply = _echo(server.server_address, client_context(ca, cert))
        except (ssl.SSLError, ConnectionError):
            reply = b""
        assert reply == b""
        count = refused

        def counted(count: int = count) -> bool:
            return metric("socketserver_requests_rejected_total", reason="tls_handshake") == count

        wait_for(counted)
    assert metric("socketserver_requests_total", outcome="ok") == 1


def test_a_silent_client_does_not_hold_up_the_others(
    tls_server: Callable[..., Any], server_context: ssl.SSLContext, ca: trustme.CA,
    metric: Any, wait_for: Any,
) -> None:  # fmt: skip
    server = tls_server(server_context, header_timeout=5.0)
    silent = socket.create_connection(server.server_address, timeout=10)  # sends no hello
    try:
        assert _echo(server.server_address, client_context(ca), b"meanwhile\n") == b"meanwhile\n"
        silent.settimeout(10)
        assert silent.recv(10) == b""  # closed at the time-out, not held forever
        wait_for(lambda: metric("socketserver_requests_rejected_total", reason="tls_handshake")
                 == 1)  # fmt: skip
    finally:
        silent.close()


@pytest.fixture
def https(tls_server: Callable[..., Any], server_context: ssl.SSLContext) -> Iterator[Any]:
    yield tls_server(server_context, OkHandler)


def test_https_requests_say_https(
    https: Any, ca: trustme.CA, span_exporter: Any, wait_for: Any
) -> None:
    import http.client

    conn = http.client.HTTPSConnection(*https.server_address, context=client_context(ca))
    for _ in range(2):  # keep-alive over TLS
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
    conn.close()
    spans = lambda: [s for s in span_exporter.get_finished_spans()  # noqa: E731
                     if "http.request.method" in s.attributes]  # fmt: skip
    wait_for(lambda: len(spans()) == 2)
    assert {s.attributes["url.scheme"] for s in spans()} == {"https"}
