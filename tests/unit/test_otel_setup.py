"""runtime.telemetry.otel: the SDK set-up of ``python -m runtime``, batching without fork costs."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence

import pytest
from _proc import poll
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import runtime
from runtime.telemetry.otel import BatchSpanProcessor, TracerProvider, tracer_provider


class Recorder(SpanExporter):
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append([s.name for s in spans])
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True


def export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "runtime-span-export"]


def test_spans_are_exported_in_batches_when_a_batch_fills_up() -> None:
    exporter = Recorder()
    processor = BatchSpanProcessor(exporter, max_export_batch_size=4, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(9):
        tracer.start_span(f"s{i}").end()
    # Full batches go without waiting for the (1 minute) schedule.
    poll(lambda: sum(len(b) for b in exporter.batches) >= 8, what="two batches exported")
    assert provider.force_flush()
    assert all(len(b) <= 4 for b in exporter.batches)
    assert [n for b in exporter.batches for n in b] == [f"s{i}" for i in range(9)]
    provider.shutdown()
    assert exporter.shut


def test_shutdown_exports_what_is_queued_and_then_nothing_more() -> None:
    exporter = Recorder()
    provider = tracer_provider(exporter)
    tracer = provider.get_tracer("t")
    tracer.start_span("before").end()
    provider.shutdown()
    tracer.start_span("after").end()
    assert exporter.batches == [["before"]]


def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    exporter = Recorder()
    drops: list[int] = []
    processor = BatchSpanProcessor(
        exporter, max_queue_size=3, schedule_delay_millis=60_000, on_drop=drops.append
    )
    processor.max_export_batch_size = 10  # never woken early: the queue only fills
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    for i in range(5):
        tracer.start_span(f"s{i}").end()
    assert processor.dropped == 2
    assert drops == [1, 1]  # each reported as it happens, on the thread that ended it
    processor.force_flush()
    assert [n for b in exporter.batches for n in b] == ["s0", "s1", "s2"]
    provider.shutdown()


def test_the_provider_reports_drops_to_an_on_drop_given_or_set_later() -> None:
    given: list[int] = []
    provider = tracer_provider(Recorder(), on_drop=given.append)
    later: list[int] = []
    provider.on_drop = later.append  # as the app does once its Telemetry exists
    provider.shutdown()
    provider.get_tracer("t").start_span("after shutdown").end()
    assert (given, later) == ([], [1])


def test_unsampled_spans_are_not_queued() -> None:
    exporter = Recorder()
    before = export_threads()
    provider = tracer_provider(exporter, sampler=ALWAYS_OFF)
    provider.get_tracer("t").start_span("dropped").end()
    provider.force_flush()
    assert exporter.batches == []
    assert export_threads() == before  # nothing to export: no thread either
    provider.shutdown()


def test_the_queue_size_comes_from_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "7")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100")
    processor = BatchSpanProcessor(Recorder())
    assert (processor.max_queue_size, processor.max_export_batch_size) == (7, 7)


@pytest.mark.timeout(30)
def test_a_forked_child_starts_no_thread_until_it_ends_a_span_and_exports_its_own() -> None:
    """The SDK's processor starts an export thread (its provider a detector pool) in each child."""
    exporter = Recorder()
    before = len(export_threads())
    provider = tracer_provider(exporter)
    tracer = provider.get_tracer("t")
    tracer.start_span("parent").end()
    assert len(export_threads()) == before + 1
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, as text, then leave at once
        code = 1
        try:
            before = [t.name for t in threading.enumerate()]
            dropped = provider.flush_or_drop(1000)  # nothing queued here: no thread either
            flushed = [t.name for t in threading.enumerate()]
            tracer.start_span("child").end()
            provider.force_flush()
            after = len(export_threads())
            names = [n for b in exporter.batches for n in b]
            os.write(write_end, json.dumps([before, dropped, flushed, after, names]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        before, dropped, flushed, after, names = json.loads(pipe.read())
    assert os.waitstatus_to_exitcode(status) == 0
    assert before == ["MainThread"]  # the fork started nothing
    assert (dropped, flushed) == (0, ["MainThread"])  # nor did a flush with nothing queued
    assert after == 1  # the child's first span started its own exporter thread
    assert names == ["child"]  # the parent's queued span is the parent's to export
    provider.force_flush()
    assert [n for b in exporter.batches for n in b] == ["parent"]
    provider.shutdown()


@pytest.mark.timeout(60)
def test_fork_mode_children_reach_the_handler_without_starting_threads() -> None:
    """Fork mode with traces: each child runs the handler with only its main thread."""
    exporter = Recorder()
    provider = tracer_provider(exporter)

    class Handler(runtime.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(f"{threading.active_count()}\n".encode())

    server = runtime.ForkingTCPServer(
        ("127.0.0.1", 0), Handler, telemetry=runtime.Telemetry(tracer_provider=provider)
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        counts = []
        for _ in range(3):
            with socket.create_connection(server.server_address, timeout=10) as sock:
                sock.sendall(b"go\n")
                sock.shutdown(socket.SHUT_WR)
                counts.append(sock.makefile("rb").readline())
        assert counts == [b"1\n"] * 3

        def exported() -> list[str]:
            provider.force_flush()
            return [n for b in exporter.batches for n in b]

        # A request's span ends once the parent has its child's report; the parent exports it.
        poll(lambda: len(exported()) >= 3, what="three request spans")
        poll(lambda: server.active_children is None, what="children reaped")
        assert exported() == ["Handler tcp"] * 3
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        provider.shutdown()
