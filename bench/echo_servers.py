"""Line-echo servers for the benchmark: the standard library's and the runtime's.

``python bench/echo_servers.py NAME [--cpu K] [--exit-on-stdin-eof]`` binds 127.0.0.1:0, prints the
port on stdout (one line), and serves until SIGTERM or SIGINT.  Every server
uses the same handler (upper-cases each line) and the same class variables
(``request_queue_size = 1024`` so the kernel backlog is not the bottleneck,
``allow_reuse_address = True``); only the server class differs.

Names:

- ``stdlib-threading``: ``socketserver.ThreadingTCPServer`` (the baseline)
- ``runtime-threading``: ``runtime.ThreadingTCPServer`` with ``runtime.Telemetry()``
  (Prometheus metrics on a fresh registry, no traces)
- ``runtime-threading-notel``: ``runtime.ThreadingTCPServer`` without telemetry
- ``runtime-threading-nolog``: as ``runtime-threading``, with ``access_log = False``
  (no log line per request), to show what the access log costs
- ``runtime-threading-watchdog``: as ``runtime-threading-nolog``, with the watchdog
  running (``request_warn_after`` 30 s, ``request_timeout`` 60 s), to show what it costs

The runtime servers otherwise keep their defaults (so, at the time of writing, the
access log on: one JSON line per request to stderr).

The stdlib server never imports ``runtime`` (nor prometheus_client), so its
process pays for nothing it does not use.
"""

from __future__ import annotations

import argparse
import os
import signal
import socketserver
import sys
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST_QUEUE_SIZE = 1024


class UpperHandler(socketserver.StreamRequestHandler):
    """Echo each line upper-cased until the client closes its side."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def _stdlib_threading() -> socketserver.TCPServer:
    class Server(socketserver.ThreadingTCPServer):
        request_queue_size = REQUEST_QUEUE_SIZE
        allow_reuse_address = True

    return Server(("127.0.0.1", 0), UpperHandler)


def _runtime_threading(
    *, telemetry: bool, access_log: bool = True, watchdog: bool = False
) -> socketserver.TCPServer:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    import runtime

    class Server(runtime.ThreadingTCPServer):
        request_queue_size = REQUEST_QUEUE_SIZE
        allow_reuse_address = True

    if not access_log:
        Server.access_log = False

    # Metrics only: Telemetry() has no tracer provider, so no traces.
    server = Server(
        ("127.0.0.1", 0), UpperHandler, telemetry=runtime.Telemetry() if telemetry else None
    )
    if watchdog:
        from runtime.watchdog import Watchdog

        Watchdog(server, warn_after=30.0, timeout=60.0).start()  # a daemon thread
    return server


SERVERS: dict[str, Callable[[], socketserver.TCPServer]] = {
    "stdlib-threading": _stdlib_threading,
    "runtime-threading": lambda: _runtime_threading(telemetry=True),
    "runtime-threading-notel": lambda: _runtime_threading(telemetry=False),
    "runtime-threading-nolog": lambda: _runtime_threading(telemetry=True, access_log=False),
    "runtime-threading-watchdog": lambda: _runtime_threading(
        telemetry=True, access_log=False, watchdog=True
    ),
}


def _stop_on_stdin_eof() -> None:
    """Send ourselves SIGTERM when stdin reaches end-of-file (the parent went away)."""
    while sys.stdin.buffer.read(4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def serve(name: str, *, parent_watch: bool = False) -> None:
    """Run server *name* until SIGTERM/SIGINT, then shut it down and close it.

    With *parent_watch*, end-of-file on stdin also stops it, so a harness that
    is killed (and so closes its end of the pipe) never leaves a server behind.
    """
    stop = {signal.SIGTERM, signal.SIGINT}
    # Block the stop signals before any thread starts (threads inherit the mask);
    # the main thread takes them with sigwait and shuts the server down from
    # outside the serving thread, which is what socketserver's shutdown() needs.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    if parent_watch:
        threading.Thread(target=_stop_on_stdin_eof, name="parent-watch", daemon=True).start()
    server = SERVERS[name]()
    try:
        loop = threading.Thread(target=server.serve_forever, name="serve_forever")
        loop.start()
        port = server.server_address[1]
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        signal.sigwait(stop)
        server.shutdown()
        loop.join()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("name", choices=sorted(SERVERS))
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (harness use)"
    )
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # before any thread exists, so all inherit it
    serve(args.name, parent_watch=args.exit_on_stdin_eof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
