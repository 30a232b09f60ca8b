"""socketserver-runtime: the standard library's socketserver, production-grade.

``import runtime as socketserver`` and the same code gets every hook measured
and traced, bounded thread and fork pools, a non-deadlocking ``shutdown()``,
and (through :class:`Runtime` / :func:`serve`) signals, a graceful drain and
an admin port with ``/metrics``, ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from socketserver import (  # same objects as the standard library's
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
)

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
    "instrument",
    "serve",
]


def serve(server: BaseServer, **options: object) -> int:
    """Run *server* under a :class:`Runtime` (signals, graceful drain); return the exit status.

    *options* are :class:`Runtime`'s keyword arguments (``drain_delay``,
    ``graceful_timeout``, ...).  For the admin port, use :func:`runtime.app.run`.
    """
    return Runtime(server, **options).run()  # type: ignore[arg-type]
