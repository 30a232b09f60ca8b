"""The runtime configurations the benchmarks measure (issue 4's targets).

- *lean*: metrics on; traces sampled at 1 %, parent-based, into a batch
  processor; access log off.
- *everything on*: metrics; every request traced (the SDK's default sampler,
  parent-based always-on) into a batch processor whose exporter drops the
  batch; a JSON access line per request, to a file.

The provider and its batch processor are the ones ``python -m runtime`` builds
(``runtime.telemetry.otel``: the SDK's, without the threads the SDK starts in
every forked child).

The exporter does nothing so that only the cost paid in the server's process
is measured (creating, recording and queueing spans, the processor's thread
and batching), not a collector's.  Imported only by the runtime's servers: the
standard library's baselines never load opentelemetry or prometheus_client.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import runtime  # noqa: E402

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["NoopExporter", "everything_on", "json_file_logger", "lean", "tracer_provider"]

LEAN_SAMPLE_RATIO = 0.01


class NoopExporter(SpanExporter):
    """Accepts every batch and drops it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def tracer_provider(ratio: float) -> TracerProvider:
    """The provider ``python -m runtime`` builds, sampling *ratio* of new traces
    (parent-based), batching to nowhere."""
    from runtime.telemetry.otel import tracer_provider as runtime_provider

    sampler: Sampler = ParentBased(ALWAYS_ON if ratio >= 1.0 else TraceIdRatioBased(ratio))
    provider: TracerProvider = runtime_provider(NoopExporter(), sampler=sampler)
    return provider


def lean() -> runtime.Telemetry:
    """Metrics, and traces for 1 % of requests (set ``access_log = False`` on the server)."""
    return runtime.Telemetry(tracer_provider=tracer_provider(LEAN_SAMPLE_RATIO))


def everything_on() -> runtime.Telemetry:
    """Metrics, and a trace of every request."""
    return runtime.Telemetry(tracer_provider=tracer_provider(1.0))


def json_file_logger(path: Path | None) -> FilteringBoundLogger:
    """The runtime's JSON logger appending to *path* (None: a temporary file)."""
    from runtime.telemetry.logging import make_logger

    # Left open: the server logs to it as long as the process lives.
    if path is None:
        return make_logger(fmt="json", stream=tempfile.TemporaryFile("w+"))
    return make_logger(fmt="json", stream=open(path, "a"))
