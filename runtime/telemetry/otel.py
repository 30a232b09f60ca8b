"""An OpenTelemetry SDK set-up that costs a forked process nothing until it traces,
and never holds the exit for a collector that does not answer.

The SDK's ``TracerProvider`` and ``BatchSpanProcessor`` each register an
``os.register_at_fork`` hook: in every forked child the provider re-runs its
process-dependent resource detectors in a thread pool, and the processor
starts a new export thread.  A fork-mode server forks once per request and
its children hand their spans to the parent (see ``pools.ForkingMixIn``), so
those threads are pure cost: measured about 1 ms of CPU per request (a
child reached the handler after 1.4-1.8 ms of CPU instead of 0.45 ms), half
the fork-mode server's throughput.

The SDK's processor also exports on the caller's thread in ``force_flush``
(ignoring its time-out) and joins its thread for up to 30 s at shutdown; the
OTLP/HTTP exporter gives each export 10 s (``OTEL_EXPORTER_OTLP_TIMEOUT``)
and only its retry back-off is cut short by ``shutdown()``.  With a collector
that accepts connections and never answers, the exit after SIGTERM waited one
export time-out per queued batch: measured 10 s (20 spans), 35-43 s (1,600 to
3,000 spans, batches of 512), 100 s (40 spans, batches of 4), past a pod's
grace period.  Here only the export thread calls the exporter, and everyone
else waits for it at most until a deadline: that exit now takes the drain's
flush deadline (5 s) and 0.1-0.3 s more, in thread, fork and pre-fork mode.

- :class:`TracerProvider`: the SDK's, whose at-fork hook only renews its lock;
  ``flush_or_drop()`` is the flush on the way out; ``on_drop`` hears of every
  span dropped.  A forked process keeps the parent's resource
  (``service.instance.id`` included); the runtime's pre-fork workers build
  their own provider.
- :class:`BatchSpanProcessor`: the SDK's batching semantics (a bounded queue,
  an export thread woken by a full batch or every ``schedule_delay``; the
  ``OTEL_BSP_*`` variables), started by the first span a process ends;
  flushes and shutdown bounded by deadlines, drops counted.

:func:`tracer_provider` builds the pair, as ``python -m runtime`` does.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "BatchSpanProcessor",
    "TracerProvider",
    "TracingSetupError",
    "provider_from_environment",
    "run_within",
    "tracer_provider",
]

_log = logging.getLogger(__name__)

# Exporters skip their own HTTP calls while this context key is set (the SDK's processor sets it).
_SUPPRESS = getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")
_THREAD = "runtime-span-export"

#: Seconds ``shutdown()`` gives the export thread to export what is still queued.
SHUTDOWN_TIMEOUT = 5.0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        _log.warning("%s=%r is not an integer; using %d", name, value, default)
        return default


def run_within(call: Callable[[], object], timeout: float, name: str = _THREAD + "-call") -> bool:
    """Run *call* on a daemon thread and wait for it at most *timeout* seconds.

    True if it returned (or raised: logged) in time.  For calls into code that
    may ignore its own time-out (an exporter, another processor): whatever it
    does, the caller is free at the deadline, and a daemon thread never holds
    the process's exit.
    """

    def run() -> None:
        try:
            call()
        except Exception:  # noqa: BLE001 - whatever it raises, the caller goes on
            _log.exception("%s failed", name)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    return not thread.is_alive()


class TracerProvider(sdk_trace.TracerProvider):
    """The SDK's provider; in a forked child it renews its lock and nothing else.

    ``on_drop``: called with a count whenever its :class:`BatchSpanProcessor`
    (as :func:`tracer_provider` wires it) drops spans; settable at any time,
    e.g. once the counter exists (``telemetry.dropped("spans", n)``).
    """

    on_drop: Callable[[int], None] | None = None

    def _handle_fork(self) -> None:
        self._tracers_lock = threading.Lock()

    def spans_dropped(self, count: int) -> None:
        """Tell ``on_drop`` (if set) that *count* spans were dropped."""
        callback = self.on_drop
        if callback is not None:
            callback(count)

    def flush_or_drop(self, timeout_millis: float) -> int:
        """The flush on the way out: export what waits, give up on it at the deadline.

        Returns within *timeout_millis* (and a few milliseconds) whatever the
        exporters do.  Each :class:`BatchSpanProcessor` gets
        :meth:`BatchSpanProcessor.flush_or_drop` with the time left; other
        processors a ``force_flush`` on a thread of its own, not waited for
        after the deadline.  Returns the spans dropped meanwhile (given up at
        the deadline, or failed to export), as counted by ``on_drop``.
        """
        deadline = monotonic() + max(0.0, timeout_millis) / 1000
        dropped = 0
        for processor in getattr(self._active_span_processor, "_span_processors", ()):
            left = max(0.0, deadline - monotonic())
            if isinstance(processor, BatchSpanProcessor):
                dropped += processor.flush_or_drop(left * 1000)
            else:
                run_within(functools.partial(processor.force_flush, int(left * 1000)), left)
        return dropped


class _Flush:
    """One force_flush waiting for the export thread: done once its spans are exported."""

    __slots__ = ("deadline", "done")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = threading.Event()


class BatchSpanProcessor(SpanProcessor):
    """Sampled spans, queued and exported in batches from a thread this process starts lazily.

    At most ``max_queue_size`` spans wait; the thread exports when
    ``max_export_batch_size`` are queued or every ``schedule_delay_millis``.
    Defaults from ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048), ``OTEL_BSP_SCHEDULE_DELAY``
    (5000 ms), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512).

    Only the export thread calls the exporter's ``export`` and ``force_flush``;
    ``on_end`` never waits for it, and the other methods wait at most until a
    deadline:

    - :meth:`force_flush` (the SDK's contract, time-out honoured): True once
      every span queued before the call has been through ``export``; False
      at the deadline, the rest still queued.
    - :meth:`flush_or_drop`: the flush on the way out; at the deadline it
      gives up (:meth:`drop_pending`).
    - :meth:`shutdown`: the thread exports what is queued and shuts the
      exporter down; after ``shutdown_timeout_millis`` (default 5000), or at
      once if an export already outlived a deadline and has not returned, the
      rest is dropped and the exporter is shut down on a thread of its own.

    Dropped spans, each counted once in ``dropped`` and reported to
    ``on_drop(count)``: those that found the queue full, those whose export
    failed (``FAILURE`` or an exception), those given up at a deadline (still
    queued, or in an export that had not returned: the collector may yet
    receive these), and those ended after shutdown.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
        shutdown_timeout_millis: float | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        delay = schedule_delay_millis or _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000)
        self.schedule_delay = delay / 1000.0
        batch = max_export_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self.max_export_batch_size = min(batch, self.max_queue_size)
        self.shutdown_timeout = (
            SHUTDOWN_TIMEOUT if shutdown_timeout_millis is None else shutdown_timeout_millis / 1000
        )
        self.on_drop = on_drop
        self.dropped = 0
        self._full = 0  # of them, for want of room in the queue (logged now and then)
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
        self._lock = threading.Lock()  # the thread, flush requests, the batch in export
        self._count_lock = threading.Lock()  # ``dropped``
        self._wake = threading.Event()
        self._stopped = threading.Event()  # the thread exported its last and shut the exporter
        self._thread: threading.Thread | None = None
        self._flushes: list[_Flush] = []
        self._exporting = 0  # spans in the export under way (0 once given up on)
        self._calling = False  # the thread is in the exporter's export or force_flush
        self._stuck = False  # that call outlived a deadline and has not returned
        self._exporter_shut = False
        self._queue.clear()  # the parent's spans are the parent's to export

    # -- the request path: never waits for the exporter ---------------------------------

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        if self._shutdown:
            self._drop(1)
            return
        if self._thread is None:
            self._start()
        if len(self._queue) >= self.max_queue_size:
            self._full += 1
            if self._full == 1 or self._full % 1000 == 0:
                _log.warning(
                    "span queue full (%d): %d spans dropped", self.max_queue_size, self._full
                )
            self._drop(1)
            return
        self._queue.append(span)
        if len(self._queue) >= self.max_export_batch_size:
            self._wake.set()

    def _drop(self, count: int) -> None:
        with self._count_lock:
            self.dropped += count
        callback = self.on_drop
        if callback is not None:
            try:
                callback(count)
            except Exception:  # noqa: BLE001 - counting must not break a request
                _log.exception("on_drop(%d) failed", count)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._shutdown:
                thread = threading.Thread(target=self._run, name=_THREAD, daemon=True)
                thread.start()
                self._thread = thread

    # -- the export thread ------------------------------------------------------------

    def _run(self) -> None:
        token = otel_context.attach(otel_context.set_value(_SUPPRESS, True))
        try:
            while True:
                self._wake.wait(self.schedule_delay)
                self._wake.clear()
                with self._lock:
                    flushes, self._flushes = self._flushes, []
                    stopping = self._shutdown
                self._export()
                if flushes:
                    self._flush_exporter(max(f.deadline for f in flushes))
                    for flush in flushes:
                        flush.done.set()
                if stopping:
                    self.drop_pending()  # ended while shutdown began: no one exports them now
                    self._shut_exporter()
                    self._stopped.set()
                    return
        finally:
            otel_context.detach(token)

    def _export(self) -> None:
        """Export what is queued now, in batches of at most ``max_export_batch_size``.

        Only what was queued on entry: under a steady stream of spans the
        thread still comes back to answer flushes and shutdown.
        """
        left = len(self._queue)
        while left > 0:
            with self._lock:
                count = min(self.max_export_batch_size, len(self._queue), left)
                if count == 0:
                    return  # given up on (drop_pending) meanwhile
                batch = [self._queue.popleft() for _ in range(count)]
                self._exporting = count
                self._calling = True
            left -= count
            failed = True
            try:
                failed = self.exporter.export(batch) is SpanExportResult.FAILURE
            except Exception:  # noqa: BLE001 - exporting must not kill the thread
                _log.exception("exporting %d spans failed", count)
            with self._lock:
                counted = self._exporting == 0  # given up on while it ran: counted then
                self._exporting = 0
                self._calling = self._stuck = False
            if failed and not counted:
                self._drop(count)

    def _flush_exporter(self, deadline: float) -> None:
        flush = getattr(self.exporter, "force_flush", None)
        if flush is None:
            return
        with self._lock:
            self._calling = True
        try:  # (the SDK's base class returns None, not a bool)
            flush(max(0, int((deadline - monotonic()) * 1000)))
        except Exception:  # noqa: BLE001
            _log.exception("flushing the span exporter failed")
        with self._lock:
            self._calling = self._stuck = False

    def _shut_exporter(self) -> None:
        """``exporter.shutdown()``, once, whoever gets here first."""
        with self._lock:
            if self._exporter_shut:
                return
            self._exporter_shut = True
        try:
            self.exporter.shutdown()
        except Exception:  # noqa: BLE001
            _log.exception("shutting the span exporter down failed")

    # -- flush and shutdown: bounded waits ---------------------------------------------

    def force_flush(self, timeout_millis: float = 30000) -> bool:
        """Wait until the spans queued now have been exported; at most *timeout_millis*.

        True once they have been through ``export`` (and the exporter's own
        ``force_flush``); False at the deadline, and what is left stays queued.
        Starts no thread when nothing was ever queued in this process.
        """
        deadline = monotonic() + max(0.0, timeout_millis) / 1000
        with self._lock:
            if self._shutdown:
                return not self._queue and not self._exporting
            if self._thread is None and not self._queue:
                return True
            request = _Flush(deadline)
            self._flushes.append(request)
        if self._thread is None:
            self._start()
        self._wake.set()
        return request.done.wait(max(0.0, deadline - monotonic()))

    def flush_or_drop(self, timeout_millis: float) -> int:
        """The flush on the way out: :meth:`force_flush`, and at the deadline give up.

        Returns the spans dropped meanwhile: those given up on (see
        :meth:`drop_pending`) and those whose export failed during the flush.
        """
        with self._count_lock:
            before = self.dropped
        if not self.force_flush(timeout_millis):
            count = self.drop_pending()
            _log.warning(
                "span flush missed its deadline (%.1f s): %d spans dropped",
                timeout_millis / 1000,
                count,
            )
        with self._count_lock:
            return self.dropped - before

    def drop_pending(self) -> int:
        """Give up on the spans not exported yet; count them dropped; return how many.

        The queued ones are discarded; an export under way keeps running on
        the export thread (nothing can interrupt it), but its spans are counted
        now, and :meth:`shutdown` will not wait for the exporter while that
        call (or an exporter ``force_flush`` under way) has not returned.
        """
        count = 0
        with self._lock:
            while True:
                try:
                    self._queue.popleft()
                except IndexError:
                    break
                count += 1
            count += self._exporting
            self._exporting = 0
            self._stuck = self._calling
        if count:
            self._drop(count)
        return count

    def shutdown(self) -> None:
        """Export what is queued and shut the exporter down, within ``shutdown_timeout``.

        At once if an exporter call already outlived a deadline and is still
        under way.  Spans ended from now on are dropped (and counted).
        """
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            thread, stuck = self._thread, self._stuck
        if thread is None:  # nothing was queued in this process: only the exporter to shut
            run_within(self._shut_exporter, self.shutdown_timeout, _THREAD + "-shutdown")
            return
        self._wake.set()
        if thread is threading.current_thread():
            return  # (the exporter shutting its processor down: the loop ends after this export)
        if self._stopped.wait(0.0 if stuck else self.shutdown_timeout):
            return
        count = self.drop_pending()
        if count:
            _log.warning(
                "span exporter not done at shutdown (%.1f s): %d spans dropped",
                0.0 if stuck else self.shutdown_timeout,
                count,
            )
        # Interrupts what it can (the OTLP exporter's retry back-off); nobody waits for it.
        run_within(self._shut_exporter, 0.0, _THREAD + "-shutdown")


def tracer_provider(
    exporter: SpanExporter,
    *,
    sampler: Sampler | None = None,
    resource: Resource | None = None,
    on_drop: Callable[[int], None] | None = None,
) -> Any:
    """A :class:`TracerProvider` exporting through a :class:`BatchSpanProcessor`.

    *sampler* and *resource* default as the SDK's do (``OTEL_TRACES_SAMPLER``,
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ...).  Dropped spans
    are reported to the provider's ``on_drop`` (*on_drop*, or set it later).
    """
    kwargs: dict[str, Any] = {}
    if sampler is not None:
        kwargs["sampler"] = sampler
    if resource is not None:
        kwargs["resource"] = resource
    provider = TracerProvider(**kwargs)
    provider.on_drop = on_drop
    provider.add_span_processor(BatchSpanProcessor(exporter, on_drop=provider.spans_dropped))
    return provider


class TracingSetupError(ValueError):
    """An ``OTEL_*`` setting the runtime cannot use (``setting`` names it)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


def provider_from_environment(exporter: str, default_service: str) -> Any:
    """A provider for *exporter* (``none``, ``console``, ``otlp``) set up by the standard variables.

    None for ``none``.  The SDK reads ``OTEL_TRACES_SAMPLER``/``_ARG``,
    ``OTEL_SERVICE_NAME`` (default *default_service*) and ``OTEL_RESOURCE_ATTRIBUTES``;
    the OTLP exporter reads ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``, headers,
    timeout and compression.  Every process gets its own ``service.instance.id``.
    The provider becomes the global one too (the process is the runtime's: a
    handler's own ``trace.get_tracer()`` spans are the request's children).
    Raises :class:`TracingSetupError` for a protocol other than http/protobuf.
    """
    if exporter == "none":
        return None
    import uuid

    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service}))
    if SERVICE_INSTANCE_ID not in resource.attributes:  # older SDKs do not add it
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}))
    span_exporter: SpanExporter
    if exporter == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        )
        if protocol != "http/protobuf":
            raise TracingSetupError(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                f"{protocol!r} is not supported; use http/protobuf (port 4318)",
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    # Batching like the SDK's, without threads started in every forked child.
    provider = tracer_provider(span_exporter, resource=resource)
    trace.set_tracer_provider(provider)
    return provider
