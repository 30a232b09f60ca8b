"""socketserver-runtime: the standard library's socketserver, production-grade.

``import runtime as socketserver`` and the same code gets every hook measured
and traced, bounded thread and fork pools, a non-deadlocking ``shutdown()``,
and (through :class:`Runtime` / :func:`serve`) signals, a graceful drain and
an admin port with a status page, ``/metrics``, ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

from socketserver import (  # same objects as the standard library's
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
)
from typing import Any

from ._version import __version__
from .lifecycle import Lifecycle, Runtime, State
from .pools import ForkingMixIn, ThreadingMixIn, WorkerPool
from .server import InstrumentedMixIn
from .servers import (
    BaseServer,
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    TCPServer,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    ThreadingUnixStreamServer,
    UDPServer,
    UnixDatagramServer,
    UnixStreamServer,
    instrument,
)
from .telemetry import NullTelemetry, RequestRecord, ServerTelemetry, Telemetry
from .telemetry.api import bind

__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "DatagramRequestHandler",
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "InstrumentedMixIn",
    "Lifecycle",
    "NullTelemetry",
    "RequestRecord",
    "Runtime",
    "ServerTelemetry",
    "State",
    "StreamRequestHandler",
    "TCPServer",
    "Telemetry",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
    "WorkerPool",
    "__version__",
    "bind",
    "instrument",
    "serve",
]


def serve(
    server: InstrumentedMixIn, *, admin: tuple[str, int] | None = None, **options: Any
) -> int:
    """Run *server* with signals, a graceful drain and (given *admin*) the admin port.

    Blocks until stopped (SIGTERM/SIGINT, or ``Runtime.stop``) and returns the
    exit status: 0 if nothing was forced, else 1.  *options* are
    :class:`Runtime`'s keyword arguments (``drain_delay``, ``graceful_timeout``,
    ...).  ``/metrics`` renders the server's :class:`Telemetry`, if it has one.
    """
    from .admin import AdminServer
    from .status import StatusBoard

    rt = Runtime(server, **options)
    port = None
    if admin is not None:
        telemetry = server.telemetry if isinstance(server.telemetry, Telemetry) else None
        render = telemetry.render if telemetry is not None else _no_metrics
        board = StatusBoard(rt.lifecycle, [server], telemetry)
        port = AdminServer(admin, lifecycle=rt.lifecycle, render_metrics=render, status=board)
        port.start()
    try:
        return rt.run()
    finally:
        if port is not None:
            port.close()


def _no_metrics(_accept: str) -> tuple[bytes, str]:
    return b"# no telemetry configured for this server\n", "text/plain; version=0.0.4"
