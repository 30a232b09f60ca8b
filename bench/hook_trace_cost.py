"""What a request's trace costs: hooks as span events (default) or as child spans.

``python bench/hook_trace_cost.py [--requests N]`` runs the telemetry of one
request (span start, the 8 hook timings of a thread-mode request, span end)
N times against an SDK tracer provider whose processor does nothing, so only
the runtime's and the SDK's own work is measured; metrics on in every case.
Prints microseconds per request and the ratio to metrics without traces,
measured in the same run.  Not a test.
"""

from __future__ import annotations

import argparse
import socketserver
import sys
from pathlib import Path
from time import perf_counter, time_ns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import runtime
from runtime.telemetry.api import RequestRecord

HOOKS = ("get_request", "verify_request", "process_request", "setup", "handle", "finish",
         "finish_request", "shutdown_request")  # fmt: skip


class Discard(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        pass


def per_request_us(telemetry: runtime.Telemetry, requests: int) -> float:
    server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler, False)
    server.server_label = "bench"  # type: ignore[attr-defined]
    server.transport = "tcp"  # type: ignore[attr-defined]
    bound = telemetry.bind(server)
    peer = ("127.0.0.1", 40000)
    start = perf_counter()
    for _ in range(requests):
        t0 = perf_counter()
        record = RequestRecord(None, peer, t0, time_ns())
        bound.request_started(record)
        token = bound.activate(record)
        for hook in HOOKS:
            t1 = perf_counter()
            record.hooks.append((hook, t0, t1))
            bound.hook(hook, t1 - t0, record)
        bound.deactivate(token)
        bound.request_finished(record, perf_counter())
    elapsed = perf_counter() - start
    server.server_close()
    return elapsed / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()

    def provider() -> TracerProvider:
        p = TracerProvider()
        p.add_span_processor(Discard())
        return p

    cases = {
        "metrics only": runtime.Telemetry(),
        "metrics + trace, hooks as events": runtime.Telemetry(tracer_provider=provider()),
        "metrics + trace, hooks as child spans": runtime.Telemetry(
            tracer_provider=provider(), hook_spans=True
        ),
    }
    results = {name: min(per_request_us(t, args.requests) for _ in range(3))
               for name, t in cases.items()}  # fmt: skip
    base = results["metrics only"]
    print(f"{'case':<40} {'us/request':>10} {'vs metrics only':>16}")
    for name, us in results.items():
        print(f"{name:<40} {us:>10.1f} {us / base:>15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
