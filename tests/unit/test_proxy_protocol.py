"""The PROXY protocol: the client's address from a trusted balancer's header, v1 and v2.

The header is read on the worker, exactly (the payload after it is the handler's), within
the header time-out; the address it carries is what ``verify_request``, the handler, the
access line and the HTTP span see. A header from a peer not in ``proxy_allow_from``, a
malformed one or a late one closes the connection and is counted as rejected.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from handlers import OkHandler

import runtime
from runtime._proxy import V2_SIGNATURE, ProxyError, Trusted, read_header


def v2(source: str, port: int, command: int = 0x1) -> bytes:
    if ":" in source:
        family, body = 0x21, socket.inet_pton(socket.AF_INET6, source) * 2
        body += struct.pack("!HH", port, 443)
    else:
        family, body = 0x11, socket.inet_aton(source) + socket.inet_aton("10.0.0.1")
        body += struct.pack("!HH", port, 443)
    body += b"\x04\x00\x02ab"  # a TLV (PP2_TYPE_NOOP): skipped
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def _pair(data: bytes) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.sendall(data)
    return a, b


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n", ("203.0.113.7", 5555)),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 6000 443\r\n", ("2001:db8::7", 6000)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
        (v2("203.0.113.9", 7000), ("203.0.113.9", 7000)),
        (v2("2001:db8::9", 7001), ("2001:db8::9", 7001)),
        (v2("203.0.113.9", 7000, command=0x0), None),  # LOCAL: the balancer's health check
    ],
)
def test_headers_are_read_exactly(header: bytes, expected: Any) -> None:
    a, b = _pair(header + b"GET / HTTP/1.1\r\n")
    with a, b:
        assert read_header(b, 1.0) == expected
        b.settimeout(1.0)
        assert b.recv(100) == b"GET / HTTP/1.1\r\n"  # nothing of the payload was eaten


@pytest.mark.parametrize(
    "header",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 5555\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 5555 443\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 99999 443\r\n",
        b"PROXY TCP4 nonsense 10.0.0.1 1 2\r\n",
        b"PROXY " + b"x" * 200,
        V2_SIGNATURE[:6] + b"garbage!!!" + b"\x00" * 4,
        V2_SIGNATURE + struct.pack("!BBH", 0x30 | 0x1, 0x11, 12) + b"\x00" * 12,  # version 3
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 4) + b"\x00" * 4,  # addresses cut
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 60000),  # absurd length
    ],
)
def test_malformed_headers_are_refused(header: bytes) -> None:
    a, b = _pair(header)
    with a, b:
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProxyError):
            read_header(b, 1.0)


def test_a_trickled_header_is_cut_at_the_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"PROXY TCP4 203.0.")
        start = time.monotonic()
        with pytest.raises(ProxyError, match="timed out"):
            read_header(b, 0.3)
        assert time.monotonic() - start < 5


def test_trusted_peers() -> None:
    trusted = Trusted(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    assert ("127.0.0.1", 1) in trusted and ("10.2.3.4", 1) in trusted
    assert ("::ffff:10.1.1.1", 1, 0, 0) in trusted  # an IPv4 peer on an IPv6 socket
    assert ("2001:db8::5", 1, 0, 0) in trusted
    assert ("192.0.2.1", 1) not in trusted and "/tmp/sock" not in trusted
    assert ("192.0.2.1", 1) in Trusted(["*"])


# -- in a server ----------------------------------------------------------------------


class SaysWho(runtime.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        host, port = self.client_address[:2]
        self.wfile.write(f"{host}:{port} {line.decode().strip()}\n".encode())


@pytest.fixture
def proxied(telemetry: runtime.Telemetry, json_logger: Any, serve: Any) -> Callable[..., Any]:
    def make(handler: type = SaysWho, base: type = runtime.ThreadingTCPServer, **attrs: Any) -> Any:
        verified: list[Any] = []

        class Server(base):  # type: ignore[misc, valid-type]
            proxy_protocol = True
            header_timeout = 0.5

            def verify_request(self, request: Any, client_address: Any) -> bool:
                verified.append(client_address)
                return client_address[0] != "198.51.100.66"  # a blocked client

        for name, value in attrs.items():
            setattr(Server, name, value)
        server = Server(("127.0.0.1", 0), handler, telemetry=telemetry, logger=json_logger)
        server.verified = verified
        return serve(server)

    return make


def _talk(address: Any, data: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def test_the_headers_client_is_the_connections(
    proxied: Callable[..., Any], metric: Any, log_stream: io.StringIO, wait_for: Any
) -> None:
    server = proxied()
    reply = _talk(server.server_address, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nhello\n")
    assert reply == b"203.0.113.7:5555 hello\n"
    six = _talk(server.server_address, v2("2001:db8::7", 6000) + b"v2\n")
    assert six == b"2001:db8::7:6000 v2\n"
    health = _talk(server.server_address, v2("203.0.113.9", 1, command=0x0) + b"local\n")
    assert health.startswith(b"127.0.0.1:") and health.endswith(b" local\n")  # LOCAL: the peer
    wait_for(lambda: metric("socketserver_requests_total", outcome="ok") == 3)
    assert server.verified[:2] == [("203.0.113.7", 5555), ("2001:db8::7", 6000)]
    clients = [json.loads(line).get("client") for line in log_stream.getvalue().splitlines()
               if '"event": "request"' in line]  # fmt: skip
    assert "203.0.113.7:5555" in clients and "[2001:db8::7]:6000" in clients


@pytest.mark.parametrize(
    ("attrs", "data"),
    [
        ({"proxy_allow_from": "10.0.0.0/8"}, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nx\n"),
        ({}, b"GET / HTTP/1.1\r\n\r\n"),  # no header
        ({}, b""),  # nothing: a slowloris, cut at header_timeout
        ({}, b"PROXY TCP4 198.51.100.66 10.0.0.1 5555 443\r\nx\n"),  # verify_request says no
    ],
    ids=["untrusted-peer", "no-header", "late", "verify-request"],
)
def test_refused_connections_are_closed_and_counted(
    proxied: Callable[..., Any], metric: Any, wait_for: Any, attrs: dict[str, Any], data: bytes
) -> None:
    server = proxied(**attrs)
    assert _talk(server.server_address, data) == b""  # closed, the handler never ran
    wait_for(lambda: metric("socketserver_requests_total", outcome="rejected") == 1)
    reason = "verify_request" if b"198.51.100.66" in data else "proxy_protocol"
    assert metric("socketserver_requests_rejected_total", reason=reason) == 1
    assert metric("socketserver_errors_total") == 0
    # and the server still serves
    ok = _talk(server.server_address, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nagain\n")
    assert ok in (b"203.0.113.7:5555 again\n", b"")  # "" only for the untrusted server


def test_a_late_header_does_not_hold_up_the_others(
    proxied: Callable[..., Any], metric: Any, wait_for: Any
) -> None:
    server = proxied(header_timeout=5.0)
    idle = socket.create_connection(server.server_address, timeout=10)  # says nothing
    try:
        reply = _talk(server.server_address, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\nnext\n")
        assert reply == b"203.0.113.7:1 next\n"
    finally:
        idle.close()


def test_http_request_spans_carry_the_real_client(
    proxied: Callable[..., Any], span_exporter: Any, wait_for: Any
) -> None:
    server = proxied(OkHandler)
    reply = _talk(
        server.server_address,
        v2("203.0.113.44", 4444) + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200")
    spans = lambda: [s for s in span_exporter.get_finished_spans()  # noqa: E731
                     if "http.request.method" in s.attributes]  # fmt: skip
    wait_for(lambda: len(spans()) == 1)
    assert spans()[0].attributes["client.address"] == "203.0.113.44"
    assert spans()[0].attributes["client.port"] == 4444


def test_off_by_default_a_proxy_header_is_payload(telemetry: runtime.Telemetry, serve: Any) -> None:
    server = serve(runtime.ThreadingTCPServer(("127.0.0.1", 0), SaysWho, telemetry=telemetry))
    reply = _talk(server.server_address, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n")
    assert reply.startswith(b"127.0.0.1:") and b"PROXY TCP4" in reply
