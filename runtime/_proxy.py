"""The PROXY protocol (v1 text, v2 binary): the client's address, from a trusted balancer.

A load balancer in TCP mode (AWS NLB, HAProxy ``send-proxy``, Envoy) opens its own
connection to the server and sends one header first that says whose connection it
carries.  :func:`read_header` reads exactly that header (never a byte of the payload
after it) on the worker that runs the request, within a deadline, and returns the
client's address, or None for a header that carries none (v2 ``LOCAL``, the balancer's
own health check; v1 ``UNKNOWN``): the connection's peer address then stays.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from time import monotonic
from typing import Any

__all__ = ["ProxyError", "Trusted", "read_header"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included
V2_MAX_BODY = 4096  # addresses and TLVs: more is not a header a balancer sends

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyError(Exception):
    """The connection does not start with a header the runtime can believe."""


class Trusted:
    """The peers whose PROXY headers are believed (``--proxy-allow-from``)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.any = False
        self.networks: list[Network] = []
        for text in networks:
            if text.strip() == "*":
                self.any = True
            else:
                self.networks.append(ipaddress.ip_network(text.strip(), strict=False))

    def __contains__(self, address: Any) -> bool:
        if self.any:
            return True
        if not isinstance(address, tuple) or not address:
            return False  # a Unix socket's peer has no address to trust
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


def _recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise ProxyError("timed out waiting for the PROXY header")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(count - len(data))
        except TimeoutError:
            raise ProxyError("timed out waiting for the PROXY header") from None
        if not chunk:
            raise ProxyError("the connection closed before its PROXY header ended")
        data += chunk
    return data


def read_header(sock: socket.socket, timeout: float) -> tuple[str, int] | None:
    """Read the PROXY header at the start of *sock*; return the client's (host, port).

    Raises :class:`ProxyError` for a missing, malformed or late header.  The socket's
    timeout is changed; the caller sets the one it wants after.
    """
    deadline = monotonic() + timeout
    start = _recv_exactly(sock, 6, deadline)
    if start == b"PROXY ":
        line = start
        while not line.endswith(b"\r\n"):  # byte by byte: the payload follows at once
            if len(line) >= V1_MAX:
                raise ProxyError("PROXY v1 line longer than 107 bytes")
            line += _recv_exactly(sock, 1, deadline)
        return _v1(line[6:-2])
    if start == V2_SIGNATURE[:6]:
        head = start + _recv_exactly(sock, 10, deadline)
        if head[:12] != V2_SIGNATURE:
            raise ProxyError("not a PROXY v2 signature")
        version_command, family, length = struct.unpack("!BBH", head[12:16])
        if length > V2_MAX_BODY:
            raise ProxyError(f"PROXY v2 header of {length} bytes")
        body = _recv_exactly(sock, length, deadline) if length else b""
        return _v2(version_command, family, body)
    raise ProxyError("the connection does not start with a PROXY header")


def _v1(text: bytes) -> tuple[str, int] | None:
    parts = text.split(b" ")
    if parts[0] == b"UNKNOWN":
        return None
    if parts[0] not in (b"TCP4", b"TCP6") or len(parts) != 5:
        raise ProxyError("malformed PROXY v1 line")
    try:
        source = ipaddress.ip_address(parts[1].decode("ascii"))
        ipaddress.ip_address(parts[2].decode("ascii"))
        port = int(parts[3])
        if not 0 <= port <= 65535 or not 0 <= int(parts[4]) <= 65535:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise ProxyError("malformed PROXY v1 addresses") from None
    if (parts[0] == b"TCP4") != (source.version == 4):
        raise ProxyError("PROXY v1 address of the wrong family")
    return str(source), port


def _v2(version_command: int, family: int, body: bytes) -> tuple[str, int] | None:
    if version_command >> 4 != 2:
        raise ProxyError("PROXY v2 version is not 2")
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own connection (a health check)
        return None
    if command != 0x1:
        raise ProxyError("PROXY v2 command is neither LOCAL nor PROXY")
    address_family = family >> 4
    if address_family == 0x1:  # AF_INET
        if len(body) < 12:
            raise ProxyError("PROXY v2 IPv4 addresses cut short")
        source, _, port, _ = struct.unpack("!4s4sHH", body[:12])
        return str(ipaddress.IPv4Address(source)), port
    if address_family == 0x2:  # AF_INET6
        if len(body) < 36:
            raise ProxyError("PROXY v2 IPv6 addresses cut short")
        source, _, port, _ = struct.unpack("!16s16sHH", body[:36])
        return str(ipaddress.IPv6Address(source)), port
    return None  # AF_UNSPEC or AF_UNIX: no address to take
