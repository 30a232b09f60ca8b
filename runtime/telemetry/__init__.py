"""Telemetry for the runtime: Prometheus metrics, OpenTelemetry traces, structlog logs.

:class:`Telemetry` owns one registry and one tracer; bind any number of
servers to it (``server.use_telemetry(telemetry)`` or the ``telemetry=``
constructor argument).  Servers with different ``server_name`` labels never
collide; servers sharing a name are reported as one (counters and gauges
summed).  Two :class:`Telemetry` objects never share state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._record import Operation, OperationSummary, RequestRecord
from .api import NULL, NullTelemetry, ServerTelemetry

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from .metrics import Metrics, ServerMetrics
    from .recent import RecentRequests
    from .tracing import ServerTracing, Tracing

__all__ = ["NULL", "NullTelemetry", "RequestRecord", "ServerTelemetry", "Telemetry"]


class Telemetry:
    """Metrics (always) and traces (when a tracer provider is given or ``tracing=True``).

    ``registry``: where the metric families live (default: a fresh registry);
    ``tracer_provider``: an OpenTelemetry provider (default: none, so no traces;
    ``tracing=True`` uses the global one); ``prefix``: metric name prefix;
    ``hook_spans``: hooks as child spans instead of span events;
    ``process_metrics``: ``process_*`` from psutil (skipped if the registry has them).

    ``worker``: a pre-fork worker's telemetry (no lifecycle, build or process
    families: its supervisor reports those).

    ``recent`` keeps the slowest requests of the last minutes and the latest
    errors for the admin status page (one comparison per request).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        tracing: bool | None = None,
        prefix: str = "socketserver_",
        hook_spans: bool = False,
        process_metrics: bool = True,
        worker: bool = False,
    ) -> None:
        from .metrics import Metrics
        from .recent import RecentRequests

        self.metrics: Metrics = Metrics(
            registry, prefix=prefix, process=process_metrics and not worker, worker=worker
        )
        self.recent: RecentRequests = RecentRequests()
        self.tracing: Tracing | None = None
        if tracing or (tracing is None and tracer_provider is not None):
            from .tracing import Tracing

            self.tracing = Tracing(tracer_provider, hook_spans=hook_spans)

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def bind(self, server: Any) -> ServerTelemetry:
        tracing = self.tracing.bind(server) if self.tracing is not None else None
        return _Bound(server, self.metrics.bind(server), tracing, self)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry as Prometheus text, or OpenMetrics when *accept* asks for it."""
        from .exposition import render

        return render(self.registry, accept)

    def flush(self, timeout: float) -> int:
        """Export what is queued within *timeout* seconds; return the spans dropped doing so."""
        return self.tracing.flush(timeout) if self.tracing is not None else 0

    def dropped(self, what: str, count: int = 1) -> None:
        """Count *count* log lines (``what="log_lines"``) or spans (``"spans"``) dropped."""
        self.metrics.dropped.labels(what).inc(count)


class _Bound:
    """One server's telemetry: metrics and, if enabled, traces."""

    def __init__(
        self, server: Any, metrics: ServerMetrics, tracing: ServerTracing | None, owner: Telemetry
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._owner = owner
        self._label = str(server.server_label)
        self._recent = owner.recent
        self.hook = metrics.hook
        self.rejected = metrics.rejected
        self.error = metrics.error
        self.queue_wait = metrics.queue_wait
        self.child_reaped = metrics.child_reaped
        self.request_slow = metrics.request_slow
        self.request_timed_out = metrics.request_timed_out
        self.datagram_truncated = metrics.datagram_truncated
        self.state_changed = metrics.state_changed
        if tracing is not None:
            self.activate = tracing.activate  # type: ignore[method-assign]
            self.deactivate = tracing.deactivate  # type: ignore[method-assign]
        else:  # metrics only: once per HTTP request, so no layer more than needed
            self.operation_started = metrics.operation_started  # type: ignore[method-assign]

    def operation_started(self, op: Operation, carrier: Any, *, count: bool = True) -> object:
        """*count* False: the span only (a forked child; its parent counts the summary)."""
        if count:
            self._metrics.operation_started(op, carrier)
        tracing = self._tracing
        if tracing is None:
            return None
        tracing.operation_started(op, carrier)
        return tracing.enter(op)

    def operation_finished(self, op: Operation, end: float, *, count: bool = True) -> None:
        if self._tracing is not None:
            self._tracing.operation_finished(op, end)
        if count:
            self._metrics.operation_ended(op, end - op.start)
            if op.error_type:  # the status page's latest errors
                self._recent.operation_error(self._label, op.summary(end - op.start))

    def operation_observed(self, summary: OperationSummary) -> None:
        self._metrics.observe_operation(summary)
        if summary[4]:  # error_type: the status page's latest errors
            self._recent.operation_error(self._label, summary)

    def request_started(self, record: RequestRecord) -> None:
        if self._tracing is not None:
            self._tracing.request_started(record)

    def activate(self, record: RequestRecord) -> object:
        return None

    def deactivate(self, token: object) -> None:
        pass

    def request_finished(self, record: RequestRecord, end: float) -> None:
        seconds = end - record.perf
        self._metrics.request_finished(record, seconds)
        self._recent.observe(self._label, record, seconds)
        if self._tracing is not None:
            self._tracing.request_finished(record, end)

    def flush(self, timeout: float) -> int:
        return self._owner.flush(timeout)

    def child_begin(self) -> None:
        if self._tracing is not None:
            self._tracing.child_begin()

    def child_end(self) -> object:
        return self._tracing.child_end() if self._tracing is not None else None

    def child_merge(self, payload: object) -> None:
        if self._tracing is not None:
            self._tracing.child_merge(payload)
