"""An OpenTelemetry SDK set-up that costs a forked process nothing until it traces.

The SDK's ``TracerProvider`` and ``BatchSpanProcessor`` each register an
``os.register_at_fork`` hook: in every forked child the provider re-runs its
process-dependent resource detectors in a thread pool, and the processor
starts a new export thread.  A fork-mode server forks once per request and
its children hand their spans to the parent (see ``pools.ForkingMixIn``), so
those threads are pure cost: measured about 1 ms of CPU per request (a
child reached the handler after 1.4-1.8 ms of CPU instead of 0.45 ms), half
the fork-mode server's throughput.

- :class:`TracerProvider`: the SDK's, whose at-fork hook only renews its lock.
  A forked process keeps the parent's resource (``service.instance.id``
  included); the runtime's pre-fork workers build their own provider.
- :class:`BatchSpanProcessor`: the SDK's batching semantics (a bounded queue,
  an export thread woken by a full batch or every ``schedule_delay``; the
  ``OTEL_BSP_*`` variables), started by the first span a process ends.

:func:`tracer_provider` builds the pair, as ``python -m runtime`` does.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["BatchSpanProcessor", "TracerProvider", "tracer_provider"]

_log = logging.getLogger(__name__)

# Exporters skip their own HTTP calls while this context key is set (the SDK's processor sets it).
_SUPPRESS = getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        _log.warning("%s=%r is not an integer; using %d", name, value, default)
        return default


class TracerProvider(sdk_trace.TracerProvider):
    """The SDK's provider; in a forked child it renews its lock and nothing else."""

    def _handle_fork(self) -> None:
        self._tracers_lock = threading.Lock()


class BatchSpanProcessor(SpanProcessor):
    """Sampled spans, queued and exported in batches from a thread this process starts lazily.

    At most ``max_queue_size`` spans wait (more are dropped and counted in
    ``dropped``); the thread exports when ``max_export_batch_size`` are queued
    or every ``schedule_delay_millis``.  ``force_flush`` and ``shutdown`` export
    everything queued.  Defaults from ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048),
    ``OTEL_BSP_SCHEDULE_DELAY`` (5000 ms), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512).
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        delay = schedule_delay_millis or _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000)
        self.schedule_delay = delay / 1000.0
        batch = max_export_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self.max_export_batch_size = min(batch, self.max_queue_size)
        self.dropped = 0
        self._queue: deque[ReadableSpan] = deque()
        self._shutdown = False
        self._renew()
        reinit = weakref.WeakMethod(self._renew)

        def after_in_child() -> None:  # no thread here: the first span ended starts one
            method = reinit()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=after_in_child)

    def _renew(self) -> None:
        """Fresh locks, no thread: at creation and in a forked child (its copies may be held)."""
        self._lock = threading.Lock()  # starting the thread
        self._export_lock = threading.Lock()  # one export at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue.clear()  # the parent's spans are the parent's to export

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or span.context is None or not span.context.trace_flags.sampled:
            return
        if self._thread is None:
            self._start()
        if len(self._queue) >= self.max_queue_size:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _log.warning(
                    "span queue full (%d): %d spans dropped", self.max_queue_size, self.dropped
                )
            return
        self._queue.append(span)
        if len(self._queue) >= self.max_export_batch_size:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._shutdown:
                thread = threading.Thread(target=self._run, name="runtime-span-export", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while not self._shutdown:
            self._wake.wait(self.schedule_delay)
            self._wake.clear()
            self._export()

    def _export(self) -> None:
        """Export what is queued, in batches of at most ``max_export_batch_size``."""
        with self._export_lock:
            token = otel_context.attach(otel_context.set_value(_SUPPRESS, True))
            try:
                while self._queue:
                    count = min(self.max_export_batch_size, len(self._queue))
                    batch: Sequence[ReadableSpan] = [self._queue.popleft() for _ in range(count)]
                    try:
                        self.exporter.export(batch)
                    except Exception:  # noqa: BLE001 - exporting must not kill the thread
                        _log.exception("exporting %d spans failed", count)
            finally:
                otel_context.detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export()
        flush = getattr(self.exporter, "force_flush", None)
        if flush is not None:  # (the SDK's base class returns None, not a bool)
            flush(timeout_millis)
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(30.0)
        self._export()
        self.exporter.shutdown()


def tracer_provider(
    exporter: SpanExporter, *, sampler: Sampler | None = None, resource: Resource | None = None
) -> Any:
    """A :class:`TracerProvider` exporting through a :class:`BatchSpanProcessor`.

    *sampler* and *resource* default as the SDK's do (``OTEL_TRACES_SAMPLER``,
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ...).
    """
    kwargs: dict[str, Any] = {}
    if sampler is not None:
        kwargs["sampler"] = sampler
    if resource is not None:
        kwargs["resource"] = resource
    provider = TracerProvider(**kwargs)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
