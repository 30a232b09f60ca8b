"""Network helpers the core and telemetry share: what the kernel says about a socket.

A leaf: it imports nothing of the runtime.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any

__all__ = ["accept_queue_length", "format_address", "request_bytes"]

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_INFO_LEN = 136  # up to and including tcpi_bytes_received
# Linux TCP states (include/net/tcp_states.h) in which that FIN was received / acknowledged.
_PEER_FIN_RECEIVED = frozenset({6, 8, 9, 11})  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
_OUR_FIN_SENT = frozenset({4, 5, 6, 9, 11})  # FIN_WAIT1/2, TIME_WAIT, LAST_ACK, CLOSING
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # the same number as SIOCOUTQ


def accept_queue_length(listener: Any, fallback: int) -> int:
    """Connections waiting in a TCP listener's accept queue (Linux reports it in
    ``tcpi_unacked`` of a listening socket), else *fallback*."""
    if _TCP_INFO is not None and listener.family in (socket.AF_INET, socket.AF_INET6):
        try:
            info = listener.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 32)
        except OSError:
            return fallback
        if len(info) >= 28 and info[0] == 10:  # TCP_LISTEN
            return int(struct.unpack_from("<I", info, 24)[0])  # tcpi_unacked
    return fallback


def request_bytes(request: Any, family: int) -> tuple[int, int | None] | None:
    """Bytes in and out of a request, for its access line: the kernel's counts
    for TCP (one getsockopt, no per-byte cost), the size of a datagram."""
    if isinstance(request, tuple):  # (data, socket) of a datagram server
        return (len(request[0]), None) if isinstance(request[0], bytes) else None
    if _TCP_INFO is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = request.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_LEN:  # a kernel older than 4.1/4.18
        return None
    # struct tcp_info: tcpi_state first; tcpi_bytes_acked and tcpi_bytes_received at 120.
    # Out = acknowledged + still queued (SIOCOUTQ: written, not yet acknowledged).
    # All follow sequence numbers, so a FIN counts as 1.
    state = info[0]
    acked, received = struct.unpack_from("QQ", info, 120)
    queued = 0
    if _SIOCOUTQ is not None:
        try:
            queued = struct.unpack("i", fcntl.ioctl(request.fileno(), _SIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            pass
    sent = acked + queued
    if state in _PEER_FIN_RECEIVED and received:
        received -= 1
    if state in _OUR_FIN_SENT and sent:
        sent -= 1
    return received, sent


def format_address(address: Any) -> str:
    """``host:port`` of a client address (``[host]:port`` for IPv6), or the path of a Unix
    socket peer."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address) if address else ""
