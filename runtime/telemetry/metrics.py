"""Prometheus metrics for the hook chain (prometheus-client).

Instruments are created once per :class:`Metrics` (one registry), label
children once per server and hook, so the per-request cost is a dict lookup
and an ``observe``/``inc``.  Gauges that describe state (in flight, workers,
queue) are read from each server's ``runtime_stats()`` at scrape time: the
hot path never touches them.
"""

from __future__ import annotations

import http.server
import platform
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import _record
from .._record import Operation, OperationSummary, RequestRecord
from .._version import __version__
from .histogram import FastHistogram

__all__ = [
    "DROPPED", "HOOKS", "HTTP_METHODS", "LATENCY_BUCKETS", "OUTCOMES", "STATES", "Metrics",
    "ServerMetrics", "http_method", "state_families",
]  # fmt: skip

HOOKS = (
    "get_request",
    "verify_request",
    "process_request",
    "finish_request",
    "setup",
    "handle",
    "finish",
    "shutdown_request",
    "handle_error",
    "handle_timeout",
    "service_actions",
)
#: ok; error (the handler raised: the server's fault); rejected (verify_request, overload);
#: client_closed (the peer reset, closed or broke the pipe mid-request: not the server's
#: fault); timed_out (ended by a time limit: the watchdog, an idle or header deadline).
OUTCOMES = ("ok", "error", "rejected", "client_closed", "timed_out")
#: What telemetry drops rather than block serving (``telemetry_dropped_total{what}``).
DROPPED = ("log_lines", "spans")
REJECT_REASONS = ("verify_request", "overload")
STATES = ("starting", "serving", "draining", "stopped")
#: Hooks take microseconds, requests up to seconds: buckets from 50 us to 10 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: error_type values kept per server before further classes count as "other".
MAX_ERROR_TYPES = 50
#: The standard HTTP methods: any other is "_OTHER" (OpenTelemetry's rule).
HTTP_METHODS = frozenset(_record.HTTP_METHODS)
#: Body sizes: from nothing to 100 MB.
SIZE_BUCKETS = (0, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
#: Distinct routes (and operation names) kept per server before others count as "_OTHER":
#: a route set from raw input by mistake costs a bounded number of series, not one per path.
MAX_ROUTES = 200
#: Label sets of the HTTP families a server caches by the values as given.
_HTTP_CACHE = 2000
_HTTP_LABELS = ("server", "http_request_method", "http_response_status_code", "http_route")
_SIZE_LABELS = ("server", "http_request_method", "http_route")
_LABELS = ("server", "transport")


class Metrics:
    """The metric families of one registry; bind each server with :meth:`bind`."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prefix: str = "socketserver_",
        buckets: Iterable[float] = LATENCY_BUCKETS,
        process: bool = True,
        worker: bool = False,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.prefix = prefix
        reg, p, b = self.registry, prefix, tuple(buckets)
        # Per-thread histograms (no lock per observation); pre-fork workers need
        # prometheus-client's, whose values live in the multiprocess files.
        histogram: Any = Histogram if worker else FastHistogram
        self.requests = Counter(
            p + "requests", "Requests taken, by outcome.", (*_LABELS, "outcome"), registry=reg
        )
        self.request_duration = histogram(
            p + "request_duration_seconds",
            "Time from taking a request to its shutdown_request, by outcome.",
            (*_LABELS, "outcome"), buckets=b, registry=reg,
        )  # fmt: skip
        self.hook_duration = histogram(
            p + "hook_duration_seconds", "Time spent in each socketserver hook.",
            (*_LABELS, "hook"), buckets=b, registry=reg,
        )  # fmt: skip
        self.rejected = Counter(
            p + "requests_rejected", "Requests refused, by reason.", (*_LABELS, "reason"),
            registry=reg,
        )  # fmt: skip
        self.errors = Counter(
            p + "errors", "Exceptions by hook and exception class (or signal of a child).",
            (*_LABELS, "hook", "error_type"), registry=reg,
        )  # fmt: skip
        self.queue_wait = histogram(
            p + "queue_wait_seconds",
            "Time a request waited for a worker thread or a child slot.",
            _LABELS, buckets=b, registry=reg,
        )  # fmt: skip
        self.children_reaped = Counter(
            p + "children_reaped", "Forked children reaped, by exit status.",
            (*_LABELS, "status"), registry=reg,
        )  # fmt: skip
        self.slow = Counter(
            p + "requests_slow", "Requests that ran longer than request_warn_after.",
            _LABELS, registry=reg,
        )  # fmt: skip
        self.timed_out = Counter(
            p + "requests_timed_out", "Requests ended by the watchdog after request_timeout.",
            _LABELS, registry=reg,
        )  # fmt: skip
        self.truncated = Counter(
            p + "datagrams_truncated",
            "Datagrams longer than max_packet_size, cut to it before the handler saw them.",
            _LABELS, registry=reg,
        )  # fmt: skip
        # HTTP requests and marked operations: registered at the first one, so a server
        # that serves neither lists no empty families.
        self._histogram, self._buckets = histogram, b
        self._families_lock = threading.Lock()
        self._http: tuple[Any, Any, Any, Any] | None = None
        #: (server label, a fork-mode server's http_requests_in_progress): added to the gauge
        self._active_sources: list[tuple[str, weakref.WeakMethod[Any]]] = []
        self.worker = worker
        self._operations: Any = None
        # Process-wide, no server label: the log stream and span queue are the process's.
        self.dropped = Counter(
            p + "telemetry_dropped",
            "Log lines and spans dropped rather than block serving, by what.",
            ("what",), registry=reg,
        )  # fmt: skip
        for what in DROPPED:
            self.dropped.labels(what)
        # A pre-fork worker's state and version are its supervisor's to report.
        self.lifecycle_state: Gauge | None = None
        if not worker:
            self.lifecycle_state = Gauge(
                p + "lifecycle_state", "1 for the server's current lifecycle state.",
                (*_LABELS, "state"), registry=reg,
            )  # fmt: skip
            build_info(reg, p)
        self._state_collector = _StateCollector(prefix)
        reg.register(self._state_collector)
        if process:
            from .process import ProcessCollector

            try:
                reg.register(ProcessCollector(self._state_collector.child_pids))
            except ValueError:  # the registry has process_* already (e.g. the global one)
                pass

    def bind(self, server: Any) -> ServerMetrics:
        return ServerMetrics(self, server, self._state_collector)

    def http_families(self) -> tuple[Any, Any, Any, Any]:
        """Duration, request and response body sizes, active requests (registered once)."""
        if self._http is not None:
            return self._http
        with self._families_lock:
            if self._http is None:
                reg, histogram, b = self.registry, self._histogram, self._buckets
                # Named after OpenTelemetry's stable HTTP metrics (no prefix).
                duration = histogram(
                    "http_server_request_duration_seconds",
                    "Duration of HTTP server requests (one per request, keep-alive included).",
                    (*_HTTP_LABELS, "error_type"), buckets=b, registry=reg,
                )  # fmt: skip
                request_size = histogram(
                    "http_server_request_body_size_bytes", "Size of HTTP server request bodies.",
                    _SIZE_LABELS, buckets=SIZE_BUCKETS, registry=reg,
                )  # fmt: skip
                response_size = histogram(
                    "http_server_response_body_size_bytes",
                    "Size of HTTP server response bodies.",
                    _SIZE_LABELS, buckets=SIZE_BUCKETS, registry=reg,
                )  # fmt: skip
                active: Any
                if self.worker:  # pre-fork: a gauge in the multiprocess files, summed live
                    active = Gauge(
                        "http_server_active_requests", "HTTP server requests in progress.",
                        ("server", "http_request_method"), registry=reg,
                        multiprocess_mode="livesum",
                    )  # fmt: skip
                else:  # per-thread counts, added up at scrape time: no lock per request
                    active = ActiveRequests(reg, self._active_sources)
                self._http = (duration, request_size, response_size, active)
        return self._http

    def add_active_source(self, server: str, source: Any, now: bool) -> None:
        """Count *source*'s HTTP requests in progress (a bound method returning {method
        label: count}: a fork-mode server's children) in ``http_server_active_requests``;
        *now*: register the HTTP families now (the server speaks HTTP), not at its first
        finished request."""
        self._active_sources.append((server, weakref.WeakMethod(source)))
        if now:
            self.http_families()

    def http_collect(self) -> Iterable[Any]:
        """The HTTP duration histogram's families (none before the first HTTP request)."""
        return self._http[0].collect() if self._http is not None else []

    def operation_family(self) -> Any:
        """``operation_duration_seconds``: operations handlers mark (registered once)."""
        if self._operations is None:
            with self._families_lock:
                if self._operations is None:
                    self._operations = self._histogram(
                        self.prefix + "operation_duration_seconds",
                        "Duration of operations handlers mark inside a connection, by name "
                        "and outcome.",
                        (*_LABELS, "operation", "outcome"), buckets=self._buckets,
                        registry=self.registry,
                    )  # fmt: skip
        return self._operations


def build_info(registry: CollectorRegistry, prefix: str) -> None:
    """Register ``build_info`` (always 1, the runtime's and Python's versions)."""
    gauge = Gauge(
        prefix + "build_info", "Always 1: the runtime's version.", ("version", "python_version"),
        registry=registry,
    )  # fmt: skip
    gauge.labels(__version__, platform.python_version()).set(1)


def _serves_http(server: Any) -> bool:
    """Whether *server*'s handler class (or the class a ``functools.partial`` makes) is an
    ``http.server`` handler."""
    cls = getattr(server, "RequestHandlerClass", None)
    cls = getattr(cls, "func", cls)
    return isinstance(cls, type) and issubclass(cls, http.server.BaseHTTPRequestHandler)


def http_method(method: str) -> str:
    """The method as a label: a standard one as is, anything else ``_OTHER``."""
    return method if method in HTTP_METHODS else "_OTHER"


class ServerMetrics:
    """Label children of one server, cached; the hot-path half of the metrics."""

    def __init__(self, metrics: Metrics, server: Any, states: _StateCollector) -> None:
        labels = (str(server.server_label), server.transport)
        self._m = metrics
        self._labels = labels
        self._hooks = {h: metrics.hook_duration.labels(*labels, h) for h in HOOKS}
        self._requests = {o: metrics.requests.labels(*labels, o) for o in OUTCOMES}
        self._durations = {o: metrics.request_duration.labels(*labels, o) for o in OUTCOMES}
        self._rejected = {r: metrics.rejected.labels(*labels, r) for r in REJECT_REASONS}
        self._queue_wait = metrics.queue_wait.labels(*labels)
        self.request_slow = metrics.slow.labels(*labels).inc
        self.request_timed_out = metrics.timed_out.labels(*labels).inc
        self.datagram_truncated = metrics.truncated.labels(*labels).inc
        self._errors: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._server = labels[0]
        self._http: dict[tuple[str, int, str, str], tuple[Any, Any, Any]] = {}
        self._active: dict[str, Any] = {}
        self._routes: set[str] = set()
        self._ops: dict[tuple[str, str], Any] = {}
        in_progress = getattr(server, "http_requests_in_progress", None)
        if in_progress is not None:  # fork mode: the requests its children serve
            metrics.add_active_source(self._server, in_progress, _serves_http(server))
        if metrics.lifecycle_state is not None:
            for state in STATES:
                metrics.lifecycle_state.labels(*labels, state).set(0)
        states.add(labels, server)

    def hook(self, name: str, seconds: float, record: RequestRecord | None = None) -> None:
        child = self._hooks.get(name)
        if child is None:
            child = self._hooks[name] = self._m.hook_duration.labels(*self._labels, name)
        child.observe(seconds, record.exemplar if record is not None else None)

    def request_finished(self, record: RequestRecord, seconds: float) -> None:
        outcome = record.outcome
        self._requests[outcome].inc()
        self._durations[outcome].observe(seconds, record.exemplar)

    def _active_gauge(self, method: str) -> Any:
        """The active gauge's child for *method* as sent (its label: http_method), cached
        under it while the cache is small (the hot path looks in ``_active`` first)."""
        gauge = self._m.http_families()[3].labels(self._server, http_method(method))
        if len(self._active) < _HTTP_CACHE:
            self._active[method] = gauge
        return gauge

    def operation_started(self, op: Operation, carrier: Any = None, *, count: bool = True) -> None:
        """*op* began: into the active gauge (an HTTP request).  The signature is the
        telemetry's (:meth:`ServerTelemetry.operation_started`), which is this one when
        nothing traces; *carrier* is for spans."""
        if count and op.kind == "http":
            (self._active.get(op.method) or self._active_gauge(op.method)).inc()

    def operation_ended(self, op: Operation, seconds: float) -> None:
        """*op* finished: out of the active gauge, into the histograms."""
        if op.kind != "http":
            self.observe_operation(op.summary(seconds))
            return
        method = op.method
        (self._active.get(method) or self._active_gauge(method)).dec()
        self._observe_http(
            method, op.status, op.route, op.error_type, seconds, op.body_in, op.body_out,
            op.exemplar,
        )  # fmt: skip

    def _bounded(self, value: str) -> str:
        """*value* (a route, an operation name) while fewer than MAX_ROUTES were seen."""
        if value in self._routes or not value:
            return value
        with self._lock:
            if len(self._routes) >= MAX_ROUTES:
                return "_OTHER"
            self._routes.add(value)
        return value

    def observe_operation(self, summary: OperationSummary) -> None:
        kind, method, status, route, error_type, outcome, seconds, body_in, body_out, ex = summary
        if kind != "http":
            key = (self._bounded(kind), outcome)
            child = self._ops.get(key)
            if child is None:
                family = self._m.operation_family()
                child = self._ops[key] = family.labels(*self._labels, *key)
            child.observe(seconds, ex)
            return
        self._observe_http(method, status, route, error_type, seconds, body_in, body_out, ex)

    def _observe_http(
        self, method: str, status: int, route: str, error_type: str, seconds: float,
        body_in: int | None, body_out: int | None, exemplar: dict[str, str] | None,
    ) -> None:  # fmt: skip
        # One lookup on the hot path: the children of this (method, status, route, error),
        # cached under the values as given while the cache is small (a client can send
        # any method: past the cap, the labels are worked out every time).
        labels = (method, status, route, error_type)
        children = self._http.get(labels)
        if children is None:
            children = self._http_children(method, status, route, error_type)
            if len(self._http) < _HTTP_CACHE:
                self._http[labels] = children
        duration, request_size, response_size = children
        duration.observe(seconds, exemplar)
        if body_in is not None:
            request_size.observe(body_in)
        if body_out is not None:
            response_size.observe(body_out)

    def _http_children(
        self, method: str, status: int, route: str, error_type: str
    ) -> tuple[Any, Any, Any]:
        method = http_method(method)
        route = self._bounded(route)
        code = str(status) if 100 <= status <= 599 else ""
        if error_type and not error_type.isdigit():
            error_type = self._error_label(error_type)
        families = self._m.http_families()
        return (
            families[0].labels(self._server, method, code, route, error_type),
            families[1].labels(self._server, method, route),
            families[2].labels(self._server, method, route),
        )

    def _error_label(self, error_type: str) -> str:
        """An exception class name as a label, bounded like errors_total's."""
        with self._lock:
            known = {e for _, e in self._errors}
            if error_type in known or len(known) < MAX_ERROR_TYPES:
                return error_type
        return "other"

    def rejected(self, reason: str) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._m.rejected.labels(*self._labels, reason)
        child.inc()

    def error(self, hook: str, error_type: str) -> None:
        key = (hook, error_type)
        child = self._errors.get(key)
        if child is None:
            with self._lock:
                if len(self._errors) >= MAX_ERROR_TYPES:
                    key = (hook, "other")
                child = self._errors.get(key)
                if child is None:
                    child = self._errors[key] = self._m.errors.labels(*self._labels, *key)
        child.inc()

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def child_reaped(self, status: str) -> None:
        self._m.children_reaped.labels(*self._labels, status).inc()

    def state_changed(self, state: str) -> None:
        gauge = self._m.lifecycle_state
        if gauge is None:
            return
        for name in STATES:
            gauge.labels(*self._labels, name).set(1 if name == state else 0)


class _Count:
    """One label set of :class:`ActiveRequests`: per-thread counts (only their thread
    writes them), summed on read; the counts of threads that ended are folded in."""

    __slots__ = ("_local", "_lock", "_retired", "_shards")

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shards: list[tuple[threading.Thread, list[int]]] = []
        self._retired = 0

    def inc(self) -> None:
        try:
            self._local.shard[0] += 1
        except AttributeError:
            self._new_shard()[0] += 1

    def dec(self) -> None:
        try:
            self._local.shard[0] -= 1
        except AttributeError:
            self._new_shard()[0] -= 1

    def _new_shard(self) -> list[int]:
        shard = [0]
        self._local.shard = shard
        with self._lock:
            self._shards.append((threading.current_thread(), shard))
        return shard

    def value(self) -> int:
        with self._lock:
            live = []
            for thread, shard in self._shards:
                if thread.is_alive():
                    live.append((thread, shard))
                else:
                    self._retired += shard[0]
            self._shards = live
            return self._retired + sum(shard[0] for _, shard in live)


class ActiveRequests(Collector):
    """``http_server_active_requests``: a gauge the request path moves without a lock."""

    def __init__(
        self, registry: CollectorRegistry, sources: list[tuple[str, weakref.WeakMethod[Any]]]
    ) -> None:
        self._children: dict[tuple[str, str], _Count] = {}
        self._sources = sources  # the metrics' own list: fork-mode servers bound later too
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, server: str, method: str) -> _Count:
        with self._lock:
            return self._children.setdefault((server, method), _Count())

    def describe(self) -> Iterable[Any]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "http_server_active_requests", "HTTP server requests in progress.",
            labels=["server", "http_request_method"],
        )  # fmt: skip

    def collect(self) -> Iterable[Any]:
        family = self._family()
        with self._lock:
            children = list(self._children.items())
        values = {labels: float(count.value()) for labels, count in children}
        for server, ref in list(self._sources):  # (a server that is gone counts nothing)
            source = ref()
            for method, count in (source() if source is not None else {}).items():
                values[(server, method)] = values.get((server, method), 0.0) + count
        for labels, value in values.items():
            family.add_metric(list(labels), value)
        return [family]


class _StateCollector(Collector):
    """In-flight, worker and queue gauges, read from each server at scrape time.

    Servers bound with the same labels are one logical server (like its
    counters, which they share): their gauges are summed.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._servers: dict[tuple[str, str], list[weakref.ref[Any]]] = {}
        self._lock = threading.Lock()

    def add(self, labels: tuple[str, str], server: Any) -> None:
        with self._lock:
            self._servers.setdefault(labels, []).append(weakref.ref(server))

    def describe(self) -> Iterable[Any]:
        return list(self._families({}))

    def child_pids(self) -> list[int]:
        """Pids of the live forked children of every bound server."""
        pids: list[int] = []
        with self._lock:
            servers = [ref() for refs in self._servers.values() for ref in refs]
        for server in servers:
            children = getattr(server, "child_pids", None)
            if children is not None:
                pids.extend(children())
        return pids

    def collect(self) -> Iterable[Any]:
        stats: dict[tuple[str, str], dict[str, float]] = {}
        with self._lock:
            for labels, refs in list(self._servers.items()):
                refs[:] = [ref for ref in refs if ref() is not None]
                if not refs:
                    del self._servers[labels]
                    continue
                total: dict[str, float] = {}
                for ref in refs:
                    server = ref()
                    for key, value in (server.runtime_stats() if server else {}).items():
                        total[key] = total.get(key, 0) + value
                stats[labels] = total
        return list(self._families(stats))

    def _families(self, stats: dict[tuple[str, str], dict[str, float]]) -> Iterator[Any]:
        return state_families(self._prefix, stats)


def state_families(prefix: str, stats: dict[tuple[str, str], dict[str, float]]) -> Iterator[Any]:
    """In flight, workers by state, their ceiling and the queue, from ``runtime_stats()`` sums."""
    p, names = prefix, list(_LABELS)
    in_flight = GaugeMetricFamily(
        p + "requests_in_flight", "Requests taken and not yet finished.", labels=names
    )
    workers = GaugeMetricFamily(
        p + "workers", "Worker threads or children, by state.", labels=[*names, "state"]
    )
    workers_max = GaugeMetricFamily(
        p + "workers_max", "Ceiling of workers (max_children).", labels=names
    )
    queue = GaugeMetricFamily(p + "queue_depth", "Requests waiting for a worker.", labels=names)
    for labels, s in stats.items():
        in_flight.add_metric(labels, s.get("in_flight", 0))
        if "workers_max" in s:
            workers.add_metric([*labels, "busy"], s["workers_busy"])
            workers.add_metric([*labels, "idle"], s["workers_idle"])
            workers_max.add_metric(labels, s["workers_max"])
            queue.add_metric(labels, s["queue_depth"])
    yield from (in_flight, workers, workers_max, queue)
