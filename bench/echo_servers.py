"""Line-echo servers for the benchmarks: the standard library's and the runtime's.

``python bench/echo_servers.py NAME [--cpu K] [--exit-on-stdin-eof] [--access-log PATH]``
binds 127.0.0.1:0, prints the port on stdout (one line), and serves until
SIGTERM or SIGINT.  Every server uses the same handler (upper-cases each line)
and the same class variables (``request_queue_size = 1024`` so the kernel
backlog is not the bottleneck, ``allow_reuse_address = True``); only the
server class and its telemetry differ.

Baselines (they never import ``runtime``, nor prometheus_client or
opentelemetry, so their processes pay for nothing they do not use):

- ``stdlib-threading``: ``socketserver.ThreadingTCPServer`` (a thread per connection)
- ``stdlib-pool8``: the same with ``process_request`` handing connections to a
  ``concurrent.futures.ThreadPoolExecutor(8)`` (the usual home-made pool)
- ``stdlib-forking``: ``socketserver.ForkingTCPServer`` (a child per connection,
  at most 40 at a time)

The runtime (``runtime_settings.py`` has the telemetry configurations):

- ``runtime-lean``: ``runtime.ThreadingTCPServer``, metrics, traces sampled at
  1 % (parent-based), access log off
- ``runtime-full``: metrics, every request traced into a batch processor with a
  no-op exporter, a JSON access line per request to a file (``--access-log``,
  default a temporary file)
- ``runtime-default``: the same telemetry, and nothing else changed: the access
  log goes where it goes by default (JSON lines to stderr)
- ``runtime-forking``: ``runtime.ForkingTCPServer`` (fork mode) with child
  telemetry: metrics and every request traced, access log off
- ``runtime-threading``: ``runtime.Telemetry()`` (metrics, no traces), defaults
  otherwise (so the access log to stderr)
- ``runtime-threading-notel``: no telemetry
- ``runtime-threading-nolog``: as ``runtime-threading``, access log off
- ``runtime-threading-watchdog``: as ``runtime-threading-nolog``, with the
  watchdog running (``request_warn_after`` 30 s, ``request_timeout`` 60 s)

``http_servers.py`` has the HTTP servers and reuses :func:`serve` from here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import resource
import signal
import socketserver
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUEST_QUEUE_SIZE = 1024
ADDRESS = ("127.0.0.1", 0)


@dataclass(frozen=True)
class Options:
    """What the command line passes to a server factory."""

    access_log: Path | None = None


class UpperHandler(socketserver.StreamRequestHandler):
    """Echo each line upper-cased until the client closes its side."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


# -- the standard library's --------------------------------------------------------------


class StdlibThreading(socketserver.ThreadingTCPServer):
    request_queue_size = REQUEST_QUEUE_SIZE
    allow_reuse_address = True


class StdlibPool8(StdlibThreading):
    """``process_request`` submits to a ``ThreadPoolExecutor(8)`` instead of starting a thread.

    Eight connections are served at once; the others wait in the executor's
    unbounded queue, so long-lived (keep-alive) clients beyond eight starve.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="pool8")
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


class StdlibForking(socketserver.ForkingTCPServer):
    request_queue_size = REQUEST_QUEUE_SIZE
    allow_reuse_address = True


# -- the runtime's -----------------------------------------------------------------------


def _runtime_threading(
    *, telemetry: bool, access_log: bool = True, watchdog: bool = False
) -> socketserver.TCPServer:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    import runtime

    class Server(runtime.ThreadingTCPServer):
        request_queue_size = REQUEST_QUEUE_SIZE
        allow_reuse_address = True

    Server.access_log = access_log
    # Metrics only: Telemetry() has no tracer provider, so no traces.
    server = Server(ADDRESS, UpperHandler, telemetry=runtime.Telemetry() if telemetry else None)
    if watchdog:
        from runtime.watchdog import Watchdog

        Watchdog(server, warn_after=30.0, timeout=60.0).start()  # a daemon thread
    return server


def _runtime(setting: str, options: Options) -> socketserver.TCPServer:
    """``runtime-lean``, ``runtime-full``, ``runtime-default`` or ``runtime-forking``."""
    import runtime_settings  # imports runtime, from this checkout

    import runtime

    base: type = runtime.ForkingTCPServer if setting == "forking" else runtime.ThreadingTCPServer

    class Server(base):  # type: ignore[misc]
        request_queue_size = REQUEST_QUEUE_SIZE
        allow_reuse_address = True
        access_log = setting in ("full", "default")

    telemetry = runtime_settings.lean() if setting == "lean" else runtime_settings.everything_on()
    logger = runtime_settings.json_file_logger(options.access_log) if setting == "full" else None
    server: socketserver.TCPServer = Server(
        ADDRESS, UpperHandler, telemetry=telemetry, logger=logger
    )
    return server


Factory = Callable[[Options], socketserver.TCPServer]
SERVERS: dict[str, Factory] = {
    "stdlib-threading": lambda _: StdlibThreading(ADDRESS, UpperHandler),
    "stdlib-pool8": lambda _: StdlibPool8(ADDRESS, UpperHandler),
    "stdlib-forking": lambda _: StdlibForking(ADDRESS, UpperHandler),
    "runtime-lean": lambda o: _runtime("lean", o),
    "runtime-full": lambda o: _runtime("full", o),
    "runtime-default": lambda o: _runtime("default", o),
    "runtime-forking": lambda o: _runtime("forking", o),
    "runtime-threading": lambda _: _runtime_threading(telemetry=True),
    "runtime-threading-notel": lambda _: _runtime_threading(telemetry=False),
    "runtime-threading-nolog": lambda _: _runtime_threading(telemetry=True, access_log=False),
    "runtime-threading-watchdog": lambda _: _runtime_threading(
        telemetry=True, access_log=False, watchdog=True
    ),
}


# -- serving -----------------------------------------------------------------------------


def _stop_on_stdin_eof() -> None:
    """Send ourselves SIGTERM when stdin reaches end-of-file (the parent went away)."""
    # os.read, not sys.stdin: a daemon thread blocked in a buffered read holds the
    # buffer's lock, and the interpreter aborts when it finds it taken at exit.
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent() -> None:
    """Stop this process (SIGTERM) when stdin closes: a harness that dies closes it."""
    threading.Thread(target=_stop_on_stdin_eof, name="parent-watch", daemon=True).start()


def serve(factory: Callable[[], socketserver.TCPServer], *, parent_watch: bool = False) -> None:
    """Run the server *factory* builds until SIGTERM/SIGINT, then shut it down and close it.

    With *parent_watch*, end-of-file on stdin also stops it, so a harness that
    is killed (and so closes its end of the pipe) never leaves a server behind.
    """
    stop = {signal.SIGTERM, signal.SIGINT}
    # Block the stop signals before any thread starts (threads inherit the mask);
    # the main thread takes them with sigwait and shuts the server down from
    # outside the serving thread, which is what socketserver's shutdown() needs.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    if parent_watch:
        watch_parent()
    server = factory()
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


def prepare_process(cpu: int | None) -> None:
    """Pin to *cpu* (before any thread exists, so all inherit it) and allow many sockets."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(
    argv: Sequence[str] | None, names: Sequence[str], doc: str | None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("name", choices=sorted(names))
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (harness use)"
    )
    parser.add_argument(
        "--access-log", type=Path, default=None, help="file for runtime-full's access lines"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, list(SERVERS), __doc__)
    prepare_process(args.cpu)
    factory, options = SERVERS[args.name], Options(access_log=args.access_log)
    serve(lambda: factory(options), parent_watch=args.exit_on_stdin_eof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
