"""The Python the runtime adds to each HTTP request, measured in one process.

    python bench/http_overhead.py [--requests 20000] [--repeats 7]

One keep-alive connection (a socket pair) carries ``--requests`` pipelined GET requests
to the HTTP hello handler; the server's ``finish_request`` serves them on this thread
while a reader thread drains the responses.  Rows: ``http.server.HTTPServer`` as is, and
``runtime.instrument(HTTPServer)`` with nothing on, with metrics (the HTTP families), with
metrics and a 1 % sampler, and with every request traced (spans to no exporter).  The
report is the median time per request of ``--repeats`` runs, and each runtime row minus
the stdlib's: the runtime's own Python per HTTP request, without the network, the load
generator or the other threads of a loaded server (under 64 threads on one core, each
such microsecond costs about 2.6 of CPU: bench/README.md).  Loopback socket pair only.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import statistics
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from http_servers import HelloHandler  # noqa: E402

import runtime  # noqa: E402

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"


def _tracer(ratio: float) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))


def _stdlib() -> Any:
    return http.server.HTTPServer(("127.0.0.1", 0), HelloHandler, bind_and_activate=False)


def _runtime(telemetry: Callable[[], Any] | None) -> Callable[[], Any]:
    def make() -> Any:
        base: type = runtime.instrument(http.server.HTTPServer)

        class Server(base):  # type: ignore[misc]
            access_log = False

        tel = telemetry() if telemetry is not None else None
        return Server(("127.0.0.1", 0), HelloHandler, bind_and_activate=False, telemetry=tel)

    return make


ROWS: dict[str, Callable[[], Any]] = {
    "stdlib": _stdlib,
    "runtime-bare": _runtime(None),
    "runtime-metrics": _runtime(lambda: runtime.Telemetry()),
    "runtime-metrics-1%": _runtime(lambda: runtime.Telemetry(tracer_provider=_tracer(0.01))),
    "runtime-traced": _runtime(lambda: runtime.Telemetry(tracer_provider=_tracer(1.0))),
}


def one_run(make: Callable[[], Any], requests: int) -> float:
    """Seconds per request for *requests* pipelined requests on one connection."""
    server = make()
    ours, theirs = socket.socketpair()
    received: list[bytes] = []

    def drain() -> None:
        while chunk := theirs.recv(1 << 16):
            received.append(chunk)

    def feed() -> None:
        theirs.sendall(REQUEST * requests)
        theirs.shutdown(socket.SHUT_WR)

    reader = threading.Thread(target=drain)
    writer = threading.Thread(target=feed)
    reader.start()
    writer.start()
    start = perf_counter()
    server.process_request(ours, ("127.0.0.1", 40000))  # sync: served on this thread
    took = perf_counter() - start
    writer.join()
    reader.join()
    theirs.close()
    server.server_close()
    answered = b"".join(received).count(b"HTTP/1.1 200 OK\r\n")
    if answered != requests:
        raise SystemExit(f"{requests} requests sent, {answered} answered")
    return took / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {name: [] for name in ROWS}
    for _ in range(args.repeats):  # interleaved: a busy moment costs every row the same
        for name, make in ROWS.items():
            results[name].append(one_run(make, args.requests))
    base = statistics.median(results["stdlib"])
    print(f"{'row':<22}{'µs/request':>12}{'added µs':>10}")
    for name, times in results.items():
        median = statistics.median(times)
        added = "" if name == "stdlib" else f"{(median - base) * 1e6:10.2f}"
        print(f"{name:<22}{median * 1e6:12.2f}{added}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
