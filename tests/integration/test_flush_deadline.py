"""A collector that never answers must not hold the exit: flushes and shutdown keep deadlines.

Unit tests drive the runtime's span processor with exporters that hang, fail or raise;
the integration tests run ``python -m runtime echo --traces otlp`` against a collector
that accepts connections and never answers (it took 35-47 s to exit after SIGTERM).
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest
from _proc import RuntimeProcess, connect, poll
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor as SdkBatchSpanProcessor,
)
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from otlp_receiver import SilentCollector
from prometheus_client import CollectorRegistry

import runtime
from runtime.telemetry.otel import BatchSpanProcessor, TracerProvider
from runtime.telemetry.tracing import Tracing

T = TypeVar("T")

#: What "returns at its deadline" may overrun by on a busy machine: generous, and far
#: below "never" (a hung exporter here blocks until the test releases it).
SLACK = 5.0
#: How long the flush waits in the unit tests.
DEADLINE = 0.3


class Hanging(SpanExporter):
    """Every export blocks until the test releases it, as with a collector that never answers."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.release = threading.Event()
        self.result = result
        self.started: list[list[str]] = []  # batches handed to export
        self.returned = 0
        self.shut = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.started.append([s.name for s in spans])
        self.release.wait()
        self.returned += 1
        return self.result

    def shutdown(self) -> None:
        self.shut.set()


class Broken(SpanExporter):
    """Fails every export: by raising, or by returning FAILURE."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        if self.raises:
            raise ConnectionError("collector gone")
        return SpanExportResult.FAILURE


class Slow(SpanExporter):
    """Takes a while per batch (a slow collector) and records what it exported."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.names: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        threading.Event().wait(self.seconds)  # the exporter's own slowness, not a test wait
        self.names.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    exporter = Hanging()
    yield exporter
    exporter.release.set()  # let the export threads it holds end


def build(
    exporter: SpanExporter, **options: Any
) -> tuple[TracerProvider, BatchSpanProcessor, list[int]]:
    """A provider with one processor (batches of 4, no timer), its drops collected in a list."""
    drops: list[int] = []
    options = {"max_export_batch_size": 4, "schedule_delay_millis": 60_000, **options}
    processor = BatchSpanProcessor(exporter, **options)
    provider = TracerProvider()
    provider.on_drop = drops.append
    processor.on_drop = provider.spans_dropped
    provider.add_span_processor(processor)
    return provider, processor, drops


def end_spans(provider: Any, count: int, prefix: str = "s") -> None:
    tracer = provider.get_tracer("t")
    for i in range(count):
        tracer.start_span(f"{prefix}{i}").end()


def returns_within(seconds: float, call: Callable[[], T], what: str) -> T:
    """*call()*'s result, or fail the test if it has not returned after *seconds*."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} still blocked after {seconds} s")
    assert box, f"{what} raised (see the thread's traceback)"
    return box[0]


# -- the processor ---------------------------------------------------------------------------


def test_the_drain_flush_returns_at_its_deadline_and_counts_what_it_gave_up(
    hanging: Hanging,
) -> None:
    provider, processor, drops = build(hanging)
    end_spans(provider, 10)  # the 4th starts an export that never returns
    poll(lambda: len(hanging.started) == 1, what="the first export under way")
    tracing = Tracing(provider)
    start = time.monotonic()
    dropped = returns_within(DEADLINE + SLACK, lambda: tracing.flush(DEADLINE), "the flush")
    assert time.monotonic() - start >= DEADLINE * 0.9  # it did wait for the exporter
    # The batch under way and the six still queued: given up, each counted once.
    assert dropped == 10
    assert sum(drops) == processor.dropped == 10
    assert hanging.started == [["s0", "s1", "s2", "s3"]]  # the queue was discarded, not exported


def test_everything_after_a_missed_deadline_returns_at_once(hanging: Hanging) -> None:
    # A shutdown that would wait a minute for the exporter: after a missed deadline it must not.
    provider, processor, drops = build(hanging, shutdown_timeout_millis=60_000)
    end_spans(provider, 4)
    poll(lambda: len(hanging.started) == 1, what="an export under way")
    assert processor.flush_or_drop(DEADLINE * 1000) == 4
    end_spans(provider, 2, "late")  # ended after the flush: nobody will export them now
    returns_within(SLACK, provider.shutdown, "the provider's shutdown")
    returns_within(SLACK, provider.shutdown, "the atexit hook (shutdown again)")
    assert processor.dropped == sum(drops) == 6
    # The exporter is told to stop (the OTLP one then cuts its retries short).
    assert hanging.shut.wait(SLACK)


def test_shutdown_without_a_flush_keeps_its_own_deadline(hanging: Hanging) -> None:
    provider, processor, drops = build(hanging, shutdown_timeout_millis=DEADLINE * 1000)
    end_spans(provider, 6)
    returns_within(DEADLINE + SLACK, provider.shutdown, "the provider's shutdown")
    assert processor.dropped == sum(drops) == 6
    end_spans(provider, 1, "after")  # ended after shutdown: dropped, counted
    assert processor.dropped == sum(drops) == 7


def test_an_export_that_returns_after_the_deadline_is_counted_once_and_exporting_resumes(
    hanging: Hanging,
) -> None:
    provider, processor, drops = build(hanging)
    end_spans(provider, 4)
    poll(lambda: len(hanging.started) == 1, what="an export under way")
    assert processor.flush_or_drop(DEADLINE * 1000) == 4
    hanging.release.set()  # the collector answers after all
    poll(lambda: hanging.returned == 1, what="the late export returned")
    end_spans(provider, 4, "next")
    assert processor.flush_or_drop(10_000) == 0
    assert hanging.started[1] == ["next0", "next1", "next2", "next3"]
    assert processor.dropped == sum(drops) == 4  # the late batch was not counted again
    provider.shutdown()


@pytest.mark.parametrize("raises", [True, False], ids=["raises", "returns_failure"])
def test_spans_of_a_failed_export_are_counted_as_dropped(raises: bool) -> None:
    exporter = Broken(raises)
    provider, processor, drops = build(exporter, max_export_batch_size=3)
    end_spans(provider, 2)
    assert returns_within(SLACK, lambda: processor.flush_or_drop(10_000), "the flush") == 2
    end_spans(provider, 3)  # a full batch: exported (and failed) without a flush
    poll(lambda: sum(drops) == 5, what="the failed batch counted")
    assert exporter.calls == 2
    assert processor.force_flush(1000)  # nothing left waiting
    provider.shutdown()


def test_a_slow_exporter_within_the_deadline_exports_everything() -> None:
    exporter = Slow(0.02)
    provider, processor, drops = build(exporter)
    end_spans(provider, 22)  # six batches
    assert processor.flush_or_drop(30_000) == 0
    assert exporter.names == [f"s{i}" for i in range(22)]
    assert drops == [] and processor.dropped == 0
    provider.shutdown()


def test_ending_spans_never_waits_for_a_hung_exporter_and_a_full_queue_is_counted(
    hanging: Hanging,
) -> None:
    provider, processor, drops = build(hanging, max_queue_size=8)
    end_spans(provider, 4)
    poll(lambda: len(hanging.started) == 1, what="an export under way")
    returns_within(SLACK, lambda: end_spans(provider, 1000), "ending 1000 spans")
    assert processor.dropped == sum(drops) == 1000 - 8  # 8 wait in the queue
    assert provider.flush_or_drop(DEADLINE * 1000) == 12  # those 8 and the 4 in export


def test_drops_reach_the_telemetry_counter(hanging: Hanging) -> None:
    provider, _, _ = build(hanging, max_queue_size=4)
    registry = CollectorRegistry()
    telemetry = runtime.Telemetry(registry=registry, tracer_provider=provider)
    provider.on_drop = lambda n: telemetry.dropped("spans", n)  # what the app wires
    end_spans(provider, 4)
    poll(lambda: len(hanging.started) == 1, what="an export under way")
    end_spans(provider, 7)  # 4 fit in the queue
    value = registry.get_sample_value("socketserver_telemetry_dropped_total", {"what": "spans"})
    assert value == 3
    provider.flush_or_drop(DEADLINE * 1000)
    value = registry.get_sample_value("socketserver_telemetry_dropped_total", {"what": "spans"})
    assert value == 3 + 8


def test_the_flush_of_another_sdk_provider_is_bounded_too(hanging: Hanging) -> None:
    """The SDK's own processor exports on the flushing thread, whatever the time-out says."""
    provider = sdk_trace.TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SdkBatchSpanProcessor(hanging, schedule_delay_millis=60_000))
    end_spans(provider, 3)
    tracing = Tracing(provider)
    assert returns_within(DEADLINE + SLACK, lambda: tracing.flush(DEADLINE), "the flush") == 0
    hanging.release.set()
    provider.shutdown()


# -- the real process -------------------------------------------------------------------------


@pytest.fixture
def silent() -> Iterator[SilentCollector]:
    collector = SilentCollector()
    yield collector
    collector.close()


def _serve_echo(collector: SilentCollector, requests: int, **env: str) -> RuntimeProcess:
    rt = RuntimeProcess(
        "echo", "--traces", "otlp", "--drain-delay", "0",
        extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, **env},
    )  # fmt: skip
    try:
        for i in range(requests):
            with connect(rt.address) as sock:
                sock.sendall(b"line %d\n" % i)
                assert sock.makefile("rb").readline() == b"line %d\n" % i
        # A batch is full: the export thread is in an export the collector never answers.
        poll(lambda: collector.connections >= 1, what="an export to the collector")
    except BaseException:
        rt.close()
        raise
    return rt


@pytest.mark.timeout(60)
def test_a_collector_that_never_answers_does_not_hold_the_exit(
    silent: SilentCollector,
) -> None:
    # Batches of 4: 40 spans are ten exports, each waiting out the exporter's own 10 s time-out
    # before this fix (one export at a time, the flush's 5 s deadline ignored).
    rt = _serve_echo(silent, 40, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4")
    try:
        sent = time.monotonic()
        rt.signal(signal.SIGTERM)
        try:
            code, err = rt.wait(timeout=20.0)  # the flush deadline is 5 s
        except subprocess.TimeoutExpired:
            pytest.fail("still running 20 s after SIGTERM (the flush deadline is 5 s)")
        took = time.monotonic() - sent
        assert code == 0, err
        found = re.search(r"span flush missed its deadline \(5\.0 s\): (\d+) spans dropped", err)
        assert found, err
        assert 0 < int(found.group(1)) <= 40
        assert '"telemetry flushed"' in err
        print(f"exit {took:.2f} s after SIGTERM")  # shown with -s: the measured number
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_spans_dropped_for_a_hung_collector_are_counted_before_the_drain(
    silent: SilentCollector,
) -> None:
    # A queue of 8 behind an export that never returns: most of 40 spans find it full.
    rt = _serve_echo(silent, 40, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4", OTEL_BSP_MAX_QUEUE_SIZE="8")
    try:
        dropped = "socketserver_telemetry_dropped_total"
        poll(lambda: rt.metric(dropped, what="spans") >= 20, what="span drops on /metrics")
        assert rt.metric(dropped, what="spans") <= 40 - 8
    finally:
        rt.close()
