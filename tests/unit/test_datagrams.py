"""Datagrams longer than ``max_packet_size``: cut as in the standard library, counted, logged."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from typing import Any

import runtime
from runtime.telemetry.logging import make_logger


class Echo(runtime.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class Small(runtime.UDPServer):
    max_packet_size = 16


def test_a_truncated_datagram_is_counted_and_logged(
    telemetry: runtime.Telemetry,
    serve: Any,
    metric: Callable[..., float],
    wait_for: Callable[..., None],
) -> None:
    stream = io.StringIO()
    server = serve(Small(("127.0.0.1", 0), Echo, telemetry=telemetry,
                         logger=make_logger(fmt="json", stream=stream)))  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for payload in (b"x" * 100, b"y" * 100, b"short"):
            client.sendto(payload, server.server_address)
            reply = client.recv(1000)
            assert reply == payload[:16]  # the standard library's cut, unchanged
    wait_for(lambda: metric("socketserver_requests_total") == 3, what="3 datagrams")
    assert metric("socketserver_datagrams_truncated_total") == 2
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (warning,) = [line for line in lines if line["event"] == "datagram truncated"]  # once a minute
    assert warning["level"] == "warning" and warning["max_packet_size"] == 16


def test_an_overridden_get_request_is_left_alone(
    telemetry: runtime.Telemetry, serve: Any, metric: Callable[..., float]
) -> None:
    import socketserver

    class Own(socketserver.UDPServer):
        max_packet_size = 16
        seen = 0

        def get_request(self) -> Any:
            self.seen += 1
            return super().get_request()

    server = serve(runtime.instrument(Own)(("127.0.0.1", 0), Echo, telemetry=telemetry))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"z" * 40, server.server_address)
        assert client.recv(1000) == b"z" * 16
    assert server.seen >= 1  # its own get_request took the datagram (the runtime's did not)
    assert metric("socketserver_datagrams_truncated_total") == 0
