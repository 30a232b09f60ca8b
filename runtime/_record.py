"""What the runtime knows about one request: the record the core carries along it.

Everything that travels along one request lives in a :class:`RequestRecord`,
created by the core when the connection or datagram is taken and finished
after ``shutdown_request``.  Hook timings are ``time.perf_counter()`` values;
``wall_ns``/``perf`` pin the record to the wall clock for trace timestamps.
A leaf: the core and telemetry both use it, it uses neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

__all__ = [
    "HTTP_METHODS",
    "HookTiming",
    "Operation",
    "OperationSummary",
    "RequestRecord",
    "bind",
    "current_operation",
    "current_request",
    "span_values",
]

#: The methods of RFC 9110 and RFC 5789 (PATCH), in a fixed order: any other is "_OTHER"
#: (OpenTelemetry's rule for the method label).
HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")

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
        "http",
        "idle_since",
        "io",
        "io_seen",
        "key",
        "operations",
        "owner",
        "perf",
        "pid",
        "queued",
        "refs",
        "rejected",
        "request",
        "span",
        "thread",
        "tls",
        "wall_ns",
        "watch",
    )

    def __init__(self, request: Any, client_address: Any, perf: float, wall_ns: int) -> None:
        self.request = request
        self.key = id(request)  # the server's key for it (the request TLS may replace)
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
        #: (protocol, cipher) once a TLS handshake succeeded; record.request is the TLS socket
        self.tls: tuple[str, str] | None = None
        self.operations = 0  # HTTP requests / marked operations finished on this connection
        self.http = False  # an http.server handler serves it (its requests have access lines)
        self.owner: Any = None  # the server running the handler (for runtime.operation)

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


#: (kind, method, status, route, error_type, outcome, seconds, body_in, body_out, exemplar).
OperationSummary = tuple[
    str, str, int, str, str, str, float, "int | None", "int | None", "dict[str, str] | None"
]


class Operation:
    """One unit of work inside a connection: an HTTP request, or an operation the
    handler marks (``runtime.operation``): its own duration, span and access line.

    ``kind`` is ``"http"`` for an HTTP request, else the operation's name.
    Times are ``perf_counter()`` seconds; ``wall_ns`` pins ``start`` to the wall clock.
    """

    __slots__ = (
        "attributes",
        "body_in",
        "body_out",
        "bytes_out",
        "context",
        "ended",
        "error",
        "error_type",
        "exemplar",
        "headers",
        "headers_out",
        "kind",
        "method",
        "path",
        "protocol",
        "record",
        "route",
        "span",
        "start",
        "status",
        "token",
        "wall_ns",
    )

    def __init__(self, record: RequestRecord, kind: str, start: float, wall_ns: int) -> None:
        self.record = record
        self.kind = kind
        self.start = start
        self.wall_ns = wall_ns
        self.method = ""  # HTTP: as sent (the metric label is normalised)
        self.path = ""  # HTTP: without the query
        self.protocol = ""  # HTTP: "1.1", "1.0"
        self.headers: Any = None  # HTTP: the request's headers (http.client.HTTPMessage)
        self.route = ""  # low cardinality: "/users/{id}", an XML-RPC method; "" unknown
        self.status = 0  # HTTP status code sent (0: none)
        self.body_in: int | None = None  # request body size (Content-Length), if known
        self.body_out: int | None = None  # response body size, if known
        self.bytes_out = 0  # bytes written for this request (status line, headers, body)
        self.headers_out = -1  # bytes_out when the headers were sent (-1: not yet)
        self.error: BaseException | None = None
        self.error_type = ""  # the server's failure: an exception class, "500"...
        self.ended = ""  # "client_closed" / "timed_out": not the server's fault
        self.attributes: dict[str, Any] | None = None  # set by the application
        self.span: Any = None  # owned by the telemetry implementation
        self.token: Any = None  # the context attached while the operation runs
        self.context: Any = None  # the span's context (with the caller's baggage)
        self.exemplar: dict[str, str] | None = None

    def summary(self, seconds: float) -> OperationSummary:
        """What the metrics take of it (picklable: a forked child sends it to its parent)."""
        return (
            self.kind, self.method, self.status, self.route, self.error_type, self.outcome,
            seconds, self.body_in, self.body_out, self.exemplar,
        )  # fmt: skip

    @property
    def user_agent(self) -> str:
        headers = self.headers
        return (headers.get("User-Agent") or "") if headers is not None else ""

    @property
    def outcome(self) -> str:
        """ok, error, client_closed or timed_out."""
        if self.error_type:
            return "error"
        return self.ended or "ok"


#: The operation (HTTP request) running in this context, if any.
current_operation: ContextVar[Operation | None] = ContextVar("current_operation", default=None)

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


def span_values(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """*attributes* as a span takes them: str, bool, int and float as they are, the rest
    as their ``str()`` (the application's values: ``runtime.set_attributes``)."""
    return {
        key: value if isinstance(value, (str, bool, int, float)) else str(value)
        for key, value in attributes.items()
    }
