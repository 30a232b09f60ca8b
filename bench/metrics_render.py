"""How long ``/metrics`` takes to render once every metric family has data.

    .venv/bin/python bench/metrics_render.py [--requests 2000] [--renders 200] [--cpu K] [--json]

Builds one :class:`runtime.Telemetry` with everything on (every request
traced, so histogram observations carry exemplars) and binds two servers to
it, as one process with a thread-mode and a fork-mode server would: ``echo``
(``runtime.ThreadingTCPServer``, watched by a watchdog) and ``echo-fork``
(``runtime.ForkingTCPServer``).  Real traffic over loopback fills the
families: good requests, requests whose handler raises, requests refused by
``verify_request``, one request slow enough for the watchdog to warn about
and then end, and requests served by forked children (reaped, counted).

Then, with both servers still up and idle (a scrape between requests), it
times ``telemetry.render()`` in the Prometheus text format and in OpenMetrics
(what Prometheus asks for first, with exemplars) ``--renders`` times each and
prints the median, p99 and max in milliseconds, the size, and the families
that have no sample at all (there should be none).  Not a test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import socketserver
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import runtime_settings  # puts this checkout's runtime on sys.path

import runtime
from runtime.watchdog import Watchdog

ADDRESS = ("127.0.0.1", 0)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
#: Every REJECT_EVERY-th connection is refused, every FAIL_EVERY-th request fails.
REJECT_EVERY, FAIL_EVERY = 17, 13
FORK_REQUESTS = 20
SLOW_SECONDS, WARN_AFTER, TIMEOUT = 0.3, 0.05, 0.1


class Handler(socketserver.StreamRequestHandler):
    """Upper-case one line; ``boom`` raises, ``slow`` sleeps past the watchdog's limits."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if line == b"boom\n":
            raise ValueError("boom")
        if line == b"slow\n":
            time.sleep(SLOW_SECONDS)
        self.wfile.write(line.upper())


class Threaded(runtime.ThreadingTCPServer):
    access_log = False
    request_queue_size = 128
    taken = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.taken += 1  # only the serving thread calls this
        return self.taken % REJECT_EVERY != 0


class Forked(runtime.ForkingTCPServer):
    access_log = False
    request_queue_size = 128


def exchange(port: int, line: bytes) -> None:
    """One request; failures are expected (refused, failing or ended requests)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(line)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):
                pass
    except OSError:
        pass


def populate(servers: tuple[Threaded, Forked], requests: int) -> None:
    threaded, forked = servers
    lines = [b"boom\n" if i % FAIL_EVERY == 0 else b"hello world\n" for i in range(1, requests)]
    lines.append(b"slow\n")
    port = threaded.server_address[1]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda line: exchange(port, line), lines))
    for _ in range(FORK_REQUESTS):
        exchange(forked.server_address[1], b"hello world\n")


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def time_renders(telemetry: runtime.Telemetry, accept: str, renders: int) -> dict[str, Any]:
    times, size = [], 0
    for _ in range(renders):
        start = time.perf_counter()
        body, _ = telemetry.render(accept)
        times.append((time.perf_counter() - start) * 1e3)
        size = len(body)
    return {
        "median_ms": statistics.median(times),
        "p99_ms": percentile(times, 0.99),
        "max_ms": max(times),
        "bytes": size,
    }


def families(telemetry: runtime.Telemetry) -> dict[str, int]:
    """Every family in the registry and its number of samples."""
    return {m.name: len(m.samples) for m in telemetry.registry.collect()}


def measure(requests: int, renders: int) -> dict[str, Any]:
    telemetry = runtime_settings.everything_on()
    logger = runtime_settings.json_file_logger(None)  # warnings and tracebacks: not stderr
    threaded = Threaded(ADDRESS, Handler, telemetry=telemetry, logger=logger, server_name="echo")
    forked = Forked(ADDRESS, Handler, telemetry=telemetry, logger=logger, server_name="echo-fork")
    watchdog = Watchdog(threaded, warn_after=WARN_AFTER, timeout=TIMEOUT)
    loops = [threading.Thread(target=s.serve_forever, args=(0.05,)) for s in (threaded, forked)]
    watchdog.start()
    for loop in loops:
        loop.start()
    try:
        populate((threaded, forked), requests)
        time.sleep(0.2)  # let the fork server reap its last children
        samples = families(telemetry)
        result = {
            "requests": requests,
            "renders": renders,
            "families": len(samples),
            "samples": sum(samples.values()),
            "families_without_samples": sorted(n for n, count in samples.items() if not count),
            "text": time_renders(telemetry, "", renders),
            "openmetrics": time_renders(telemetry, OPENMETRICS, renders),
        }
    finally:
        watchdog.stop()
        for server in (threaded, forked):
            server.shutdown()
        for loop in loops:
            loop.join()
        for server in (threaded, forked):
            server.server_close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests to the echo server")
    parser.add_argument("--renders", type=int, default=200, help="renders timed per format")
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = measure(args.requests, args.renders)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['families']} families, {result['samples']} samples after "
        f"{result['requests']} requests; without samples: "
        f"{', '.join(result['families_without_samples']) or 'none'}"
    )
    for fmt in ("text", "openmetrics"):
        r = result[fmt]
        print(
            f"{fmt:<12} median {r['median_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
            f"max {r['max_ms']:.2f} ms  {r['bytes'] / 1024:.0f} KiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
