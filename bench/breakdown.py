"""Where a request's microseconds go: the runtime's features switched on one at a time.

    .venv/bin/python bench/breakdown.py [--duration 5] [--runs 3] [--clients 64]

Part 1 (end to end): the line-echo handler served by ``runtime.ThreadingTCPServer``
in a child process pinned to CPU 0, driven connect-per-request by the C load
generator on CPU 1; each row adds one feature to the row above, and the
server's CPU time per reply (``/proc/<pid>/stat``) is reported with the
difference to the previous row (medians over ``--runs`` rounds, rows
interleaved).  ``stdlib-pool8`` (a ``ThreadPoolExecutor(8)`` in
``process_request``) is the floor a bounded pool can reach in Python.

Part 2 (microbenchmarks, in this process): the single operations behind the
rows, timed with ``timeit``.

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import statistics
import subprocess
import sys
import threading
import timeit
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

#: Each row adds one thing to the one before.
ROWS = [
    ("stdlib-pool8", "ThreadPoolExecutor(8) in process_request (the standard library)"),
    ("bare", "runtime.ThreadingTCPServer: hook chain, records, pool; no telemetry"),
    ("+nodelay", "+ TCP_NODELAY on accepted connections (the default)"),
    ("+metrics", "+ Prometheus metrics (11 hooks, request, queue wait)"),
    ("+traces1", "+ traces, 1% sampled, parent-based, batch processor"),
    ("+log", "+ JSON access line per request (to a file)"),
    ("+traces100", "+ every request traced (100%)"),
    ("+timeout", "+ connection_timeout 60 s (the CLI default: socket timeouts)"),
    ("+watchdog", "+ the watchdog (request_warn_after 30 s, request_timeout 60 s)"),
]


class _Upper(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def serve(row: str) -> None:
    """Child process: serve *row*'s configuration on 127.0.0.1:0, print the port."""
    os.sched_setaffinity(0, {0})
    server: Any
    if row == "stdlib-pool8":
        from echo_servers import StdlibPool8, UpperHandler

        server = StdlibPool8(("127.0.0.1", 0), UpperHandler)
    else:
        import runtime_settings

        import runtime

        features = [name for name, _ in ROWS]
        on = set(features[1 : features.index(row) + 1])

        class Server(runtime.ThreadingTCPServer):
            allow_reuse_address = True
            request_queue_size = 1024
            tcp_nodelay = "+nodelay" in on
            access_log = "+log" in on
            connection_timeout = 60.0 if "+timeout" in on else None

        telemetry = None
        if "+traces100" in on:
            telemetry = runtime_settings.everything_on()
        elif "+traces1" in on:
            telemetry = runtime_settings.lean()
        elif "+metrics" in on:
            telemetry = runtime.Telemetry()
        logger = runtime_settings.json_file_logger(None)
        server = Server(("127.0.0.1", 0), _Upper, telemetry=telemetry, logger=logger)
        if "+watchdog" in on:
            from runtime.watchdog import Watchdog

            Watchdog(server, warn_after=30.0, timeout=60.0, logger=logger).start()
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin
    os._exit(0)  # idle pool threads (not daemons) would hold the exit for 30 s


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(row: str, loadgen: Path, clients: int, duration: float) -> float:
    """Server CPU microseconds per reply for one run of *row*."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", row],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        port = child.stdout.readline().strip()
        cmd = ["taskset", "-c", "1", str(loadgen), "--port", port, "--mode", "connect",
               "--clients", str(clients)]  # fmt: skip
        subprocess.run([*cmd, "--duration", "1"], capture_output=True, check=True)  # warm-up
        before = _cpu(child.pid)
        out = subprocess.run([*cmd, "--duration", str(duration)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        spent = _cpu(child.pid) - before
        replies = json.loads(out)["requests"]
        return float(spent / max(1, replies) * 1e6)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def micro() -> list[tuple[str, float]]:
    """Microseconds per call of the operations behind the rows."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from prometheus_client import CollectorRegistry, Histogram

    from runtime.telemetry.histogram import FastHistogram
    from runtime.telemetry.logging import access_writer, make_logger
    from runtime.telemetry.metrics import LATENCY_BUCKETS

    registry = CollectorRegistry()
    theirs = Histogram("a", "a", ["k"], buckets=LATENCY_BUCKETS, registry=registry).labels("x")
    ours = FastHistogram("b", "b", ["k"], buckets=LATENCY_BUCKETS, registry=registry).labels("x")
    ex = {"trace_id": "a" * 32, "span_id": "b" * 16}
    tracer = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01))).get_tracer("b")
    span = tracer.start_span("s")
    with open(os.devnull, "w") as null:
        logger = make_logger(fmt="json", stream=null)
        writer = access_writer(logger)
        assert writer is not None
        fields = {"server": "echo", "client": "127.0.0.1:40000", "outcome": "ok",
                  "duration_s": 0.000123, "bytes_in": 5, "bytes_out": 5}  # fmt: skip

        def attach() -> None:
            context.detach(context.attach(trace.set_span_in_context(span)))

        import runtime_settings

        traced = runtime_settings.tracer_provider(1.0).get_tracer("b")
        attributes: dict[str, str | int] = {
            "network.transport": "tcp", "network.peer.address": "127.0.0.1",
            "network.peer.port": 40000, "server.port": 9000,
        }  # fmt: skip

        def traced_request(events: int) -> None:
            s = traced.start_span("echo tcp", kind=trace.SpanKind.SERVER)
            s.set_attributes(attributes)
            for _ in range(events):
                s.add_event("handle", {"duration_s": 0.0001})
            s.end()

        ops = [
            ("prometheus-client Histogram.observe", lambda: theirs.observe(0.0003)),
            ("  the same with an exemplar", lambda: theirs.observe(0.0003, ex)),
            ("runtime FastHistogram.observe", lambda: ours.observe(0.0003)),
            ("  the same with an exemplar", lambda: ours.observe(0.0003, ex)),
            ("start_span, not sampled (1%)", lambda: tracer.start_span("s")),
            ("make a span current and back", attach),
            ("traced request's span, 8 hook events", lambda: traced_request(8)),
            ("  the same without events", lambda: traced_request(0)),
            ("access line through structlog", lambda: logger.info("request", **fields)),
            ("access line, direct (runtime)", lambda: writer(dict(fields), None, "request")),
        ]
        results = []
        for name, op in ops:
            n = 20000
            best = min(timeit.repeat(op, number=n, repeat=3))
            results.append((name, best / n * 1e6))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if not args.skip_end_to_end:
        from _harness import build_loadgen

        loadgen = build_loadgen()
        samples: dict[str, list[float]] = {row: [] for row, _ in ROWS}
        for run in range(args.runs):
            for row, _ in ROWS:
                samples[row].append(measure(row, loadgen, args.clients, args.duration))
                print(f"run {run + 1}: {row} {samples[row][-1]:.1f} us", file=sys.stderr)
        print(f"server CPU per reply, connect-per-request, {args.clients} clients, "
              f"median of {args.runs} x {args.duration:g} s")  # fmt: skip
        print(f"{'row':12} {'us/req':>7} {'delta':>7}  what")
        previous = None
        for row, what in ROWS:
            value = statistics.median(samples[row])
            delta = "" if previous is None or row == "bare" else f"{value - previous:+7.1f}"
            print(f"{row:12} {value:7.1f} {delta:>7}  {what}")
            previous = value
        print()
    print("single operations (best of 3 x 20,000 calls)")
    for name, us in micro():
        print(f"  {name:40} {us:6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
