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

from ._operation import operation, set_attributes, set_route
from ._record import bind
from ._version import __version__
from .app import serve
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
    "operation",
    "serve",
    "set_attributes",
    "set_route",
]
