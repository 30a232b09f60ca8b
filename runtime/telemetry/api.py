"""The one small interface between the server core and telemetry.

The core (``server.py``, ``pools.py``, ``lifecycle.py``) reports to a
:class:`ServerTelemetry`; it never imports prometheus_client or opentelemetry.
:data:`NULL` does nothing, so a server built without telemetry pays one
method call per hook and nothing else.

Everything that travels along one request lives in a :class:`RequestRecord`,
created by the core when the connection or datagram is taken and finished
after ``shutdown_request``.  Hook timings are ``time.perf_counter()`` values;
``wall_ns``/``perf`` pin the record to the wall clock for trace timestamps.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "NULL",
    "HookTiming",
    "NullTelemetry",
    "RequestRecord",
    "ServerTelemetry",
    "bind",
    "current_request",
]

#: (hook name, start, end) in ``time.perf_counter()`` seconds.
HookTiming = tuple[str, float, float]


class RequestRecord:
    """What the runtime knows about one request while it is in flight."""

    __slots__ = (
        "client_address",
        "ended",
        "error",
        "error_hook",
        "error_type",
        "exemplar",
        "fields",
        "handler",
        "hooks",
        "idle_since",
        "io",
        "io_seen",
        "perf",
        "pid",
        "queued",
        "refs",
        "rejected",
        "request",
        "span",
        "thread",
        "wall_ns",
        "watch",
    )

    def __init__(self, request: Any, client_address: Any, perf: float, wall_ns: int) -> None:
        self.request = request
        self.client_address = client_address
        self.perf = perf  # perf_counter() when the request was taken
        self.wall_ns = wall_ns  # time_ns() at the same moment
        self.hooks: list[HookTiming] = []
        self.error: BaseException | None = None
        self.error_hook = ""
        self.error_type = ""  # class name, or signal name for a killed child
        self.queued = 0.0  # perf_counter() when handed to a pool, 0 if never queued
        self.rejected = ""  # reason, when the runtime refused the request
        self.refs: list[int] = []  # hand-over between the loop and the worker
        self.span: Any = None  # owned by the telemetry implementation
        self.exemplar: dict[str, str] | None = None  # trace ids of a sampled request
        self.fields: dict[str, Any] | None = None  # bound by the handler (runtime.bind)
        self.thread = 0  # ident of the thread running the handler (0: not yet, or a child)
        self.pid = 0  # the forked child running it, in fork mode
        self.watch = 0  # the watchdog's flags
        self.io: tuple[int, int | None] | None = None  # bytes in, out (None: not known)
        #: Why the request ended early, when not the server's fault: "client_closed" (the
        #: peer reset or closed it mid-request) or "timed_out" (a time limit ended it).
        self.ended = ""
        self.handler: Any = None  # the handler instance while it runs (drain hooks)
        #: monotonic() since when the connection waits, idle, for its next request
        #: (keep-alive HTTP between requests); 0.0 while a request is in progress.
        self.idle_since = 0.0
        self.io_seen = 0  # bytes in + out when the liveness check last looked

    def fail(self, hook: str, exc: BaseException) -> None:
        """Remember the first (innermost) failure of this request."""
        if not self.error_type:
            self.error = exc
            self.error_hook = hook
            self.error_type = type(exc).__name__

    @property
    def outcome(self) -> str:
        """ok, error, rejected, client_closed or timed_out (see the metric catalogue)."""
        if self.rejected:
            return "rejected"
        if self.ended:
            return self.ended
        return "error" if self.error_type else "ok"


#: The request whose handler runs in this context (thread, task or forked child).
current_request: ContextVar[RequestRecord | None] = ContextVar("current_request", default=None)


def bind(**fields: Any) -> None:
    """Add *fields* to every log line of the current request, its access line included.

    Call it from a handler (``setup``, ``handle``, ``finish``); it works in
    sync, thread and fork mode.  Outside a request it raises ``RuntimeError``.
    """
    record = current_request.get()
    if record is None:
        raise RuntimeError("runtime.bind() called outside a request handler")
    if record.fields is None:
        record.fields = {}
    record.fields.update(fields)


class ServerTelemetry(Protocol):
    """Telemetry bound to one server (its ``server`` and ``transport`` labels).

    Hot-path methods are called once per request or hook and must be cheap.
    Every hook timing goes through :meth:`hook` (metrics) and is also kept in
    ``record.hooks`` (traces read them in :meth:`request_finished`).  Gauges
    are pulled at scrape time from the server's ``runtime_stats()``.
    """

    def request_started(self, record: RequestRecord) -> None: ...

    def activate(self, record: RequestRecord) -> object:
        """Make the request's span current; return a token for :meth:`deactivate`."""
        ...

    def deactivate(self, token: object) -> None: ...

    def hook(self, name: str, seconds: float, record: RequestRecord | None = None) -> None: ...

    def request_finished(self, record: RequestRecord, end: float) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def error(self, hook: str, error_type: str) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def child_reaped(self, status: str) -> None: ...

    def request_slow(self) -> None: ...

    def request_timed_out(self) -> None: ...

    def datagram_truncated(self) -> None:
        """A datagram longer than ``max_packet_size`` arrived and was cut to it."""
        ...

    def state_changed(self, state: str) -> None: ...

    def flush(self, timeout: float) -> int:
        """Export what is queued, within *timeout* seconds; return how many spans were dropped."""
        ...

    # Forked children: begin/end run in the child around the request, and what
    # child_end returns (picklable) reaches child_merge in the parent.
    def child_begin(self) -> None: ...

    def child_end(self) -> object: ...

    def child_merge(self, payload: object) -> None: ...


class NullTelemetry:
    """Does nothing; the default when no telemetry is configured."""

    def request_started(self, record: RequestRecord) -> None:
        pass

    def activate(self, record: RequestRecord) -> object:
        return None

    def deactivate(self, token: object) -> None:
        pass

    def hook(self, name: str, seconds: float, record: RequestRecord | None = None) -> None:
        pass

    def request_finished(self, record: RequestRecord, end: float) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def error(self, hook: str, error_type: str) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def child_reaped(self, status: str) -> None:
        pass

    def request_slow(self) -> None:
        pass

    def request_timed_out(self) -> None:
        pass

    def datagram_truncated(self) -> None:
        pass

    def state_changed(self, state: str) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0

    def child_begin(self) -> None:
        pass

    def child_end(self) -> object:
        return None

    def child_merge(self, payload: object) -> None:
        pass


NULL: ServerTelemetry = NullTelemetry()
