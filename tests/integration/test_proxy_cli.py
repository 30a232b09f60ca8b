"""The PROXY protocol behind ``python -m runtime --proxy-protocol``, in every mode: the address
the balancer's header carries is the client's in the access line; an untrusted peer's
header closes the connection and is counted on /metrics."""

from __future__ import annotations

import json
import signal
import socket
import struct

import pytest
from _proc import RuntimeProcess, poll

from runtime._proxy import V2_SIGNATURE

pytestmark = pytest.mark.timeout(60)


def _v2(source: str, port: int) -> bytes:
    body = socket.inet_aton(source) + socket.inet_aton("10.0.0.1") + struct.pack("!HH", port, 80)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


def _get(address: tuple[str, int], header: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(header + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


@pytest.mark.parametrize(
    "mode",
    [("--mode", "thread"), ("--mode", "fork"), ("--mode", "prefork", "--workers", "2")],
    ids=["thread", "fork", "prefork"],
)
def test_the_balancers_client_is_the_client(mode: tuple[str, ...]) -> None:
    rt = RuntimeProcess("http_hello", "--proxy-protocol", "--drain-delay", "0", *mode)
    try:
        assert _get(rt.address, _v2("203.0.113.7", 5555)).startswith(b"HTTP/1.1 200")
        v1 = b"PROXY TCP4 203.0.113.8 10.0.0.1 6666 80\r\n"
        assert _get(rt.address, v1).startswith(b"HTTP/1.1 200")
        assert _get(rt.address, b"") == b""  # a plain GET, no header: closed
        poll(lambda: rt.metric("socketserver_requests_rejected_total", reason="proxy_protocol")
             == 1, what="the headerless connection counted")  # fmt: skip
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
    finally:
        rt.close()
    assert code == 0, err
    clients = {json.loads(line)["client"] for line in err.splitlines()
               if '"event": "request"' in line and '"method"' in line}  # fmt: skip
    assert clients == {"203.0.113.7:5555", "203.0.113.8:6666"}
    assert "PROXY header refused" in err


def test_a_peer_not_allowed_is_refused() -> None:
    rt = RuntimeProcess("http_hello", "--proxy-protocol", "--proxy-allow-from", "10.0.0.0/8")
    try:
        assert _get(rt.address, _v2("203.0.113.7", 5555)) == b""
        poll(lambda: rt.metric("socketserver_requests_rejected_total", reason="proxy_protocol")
             == 1, what="the refused connection counted")  # fmt: skip
    finally:
        rt.close()
