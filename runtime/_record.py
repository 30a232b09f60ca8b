"""What the runtime knows about one request: the record the core carries along it.

Everything that travels along one request lives in a :class:`RequestRecord`,
created by the core when the connection or datagram is taken and finished
after ``shutdown_request``.  Hook timings are ``time.perf_counter()`` values;
``wall_ns``/``perf`` pin the record to the wall clock for trace timestamps.
A leaf: the core and telemetry both use it, it uses neither.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["HookTiming", "RequestRecord", "bind", "current_request"]

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
