"""Shared fixtures for the core tests.

Every test gets its own Prometheus registry, its own in-memory OpenTelemetry
exporter and a :class:`runtime.Telemetry` built on both, so tests never share
metric or span state.  Servers started with the ``serve`` fixture run
``serve_forever`` on a thread and are shut down and closed at teardown.

Helpers are handed out as fixtures (not imported from this module) because
other test directories may have a ``conftest.py`` of their own.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from structlog.typing import FilteringBoundLogger

import runtime
from runtime.telemetry.logging import make_logger

ServerT = TypeVar("ServerT")

#: Seconds a poll waits by default before the test fails.
DEFAULT_WAIT = 10.0


def poll_until(
    predicate: Callable[[], object], timeout: float = DEFAULT_WAIT, what: str = ""
) -> None:
    """Return as soon as *predicate()* is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(0.002)  # a poll interval with a deadline, not a synchronisation sleep


def metric_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of the samples called *name* whose labels include *labels* (0.0 if none).

    With every label given this is ``registry.get_sample_value(name, labels)``.
    """
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class ServerRunner:
    """Run servers' ``serve_forever`` on threads; stop and close them all at teardown."""

    def __init__(self) -> None:
        self._running: list[tuple[Any, threading.Thread]] = []

    def __call__(self, server: ServerT, poll_interval: float = 0.05) -> ServerT:
        thread = threading.Thread(
            target=server.serve_forever,  # type: ignore[attr-defined]
            args=(poll_interval,),
            name=f"serve-{type(server).__name__}",
            daemon=True,
        )
        thread.start()
        self._running.append((server, thread))
        return server

    def stop(self, server: Any, timeout: float = 15.0) -> None:
        """``shutdown()`` then ``server_close()``, bounded in time."""
        for entry in list(self._running):
            if entry[0] is server:
                self._running.remove(entry)
                self._stop(*entry, timeout=timeout)

    def stop_all(self) -> None:
        while self._running:
            self._stop(*self._running.pop(), timeout=15.0)

    @staticmethod
    def _stop(server: Any, thread: threading.Thread, timeout: float) -> None:
        def stop() -> None:
            server.shutdown()
            thread.join()
            server.server_close()

        stopper = threading.Thread(target=stop, name="stop-server", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            raise AssertionError(f"{type(server).__name__} did not stop within {timeout}s")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def telemetry(registry: CollectorRegistry, tracer_provider: TracerProvider) -> runtime.Telemetry:
    """Metrics into the test's registry, spans into the test's in-memory exporter."""
    return runtime.Telemetry(registry=registry, tracer_provider=tracer_provider)


@pytest.fixture
def log_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def json_logger(log_stream: io.StringIO) -> FilteringBoundLogger:
    """A runtime logger writing JSON lines into ``log_stream``."""
    return make_logger(fmt="json", stream=log_stream)


@pytest.fixture
def serve() -> Iterator[ServerRunner]:
    """``serve(server)`` runs it on a thread; teardown shuts it down and closes it."""
    runner = ServerRunner()
    yield runner
    runner.stop_all()


@pytest.fixture
def metric(registry: CollectorRegistry) -> Callable[..., float]:
    """``metric(name, **labels)``: the test registry's sample value (summed over other labels)."""

    def read(name: str, **labels: str) -> float:
        return metric_value(registry, name, **labels)

    return read


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(predicate, timeout=10, what="")``: poll with a deadline."""
    return poll_until


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (AF_UNIX paths are limited to ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
