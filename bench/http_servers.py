"""HTTP hello servers for the benchmarks: http.server, the runtime, and gunicorn.

``python bench/http_servers.py NAME [--cpu K] [--exit-on-stdin-eof]`` binds
127.0.0.1:0, prints the port on stdout once it listens, and serves until
SIGTERM or SIGINT.  Every server answers each GET with ``hello, world\\n``
(200, ``Content-Length`` set, no log line per request):

- ``stdlib-http``: ``http.server.ThreadingHTTPServer`` and a
  ``BaseHTTPRequestHandler`` speaking HTTP/1.1 (keep-alive allowed), as is:
  no TCP_NODELAY, so the body, written after the headers, waits for the
  client's delayed ACK (Nagle's algorithm)
- ``stdlib-http-nodelay``: the same with TCP_NODELAY set on each accepted socket
- ``runtime-http``: the same handler served by
  ``runtime.instrument(http.server.ThreadingHTTPServer)`` (thread mode, TCP_NODELAY
  by default), metrics, traces at 1 % (parent-based), access log off
- ``runtime-http-metrics``: the same with metrics only (no tracer)
- ``runtime-http-traced``: the same with every request traced (parent-based
  always-on; the request's span and the connection's, batched to nowhere)
- ``runtime-http-access``: ``runtime-http`` plus a JSON access line per HTTP
  request, to a temporary file
- ``gunicorn-sync``: gunicorn's sync worker class, 2 workers, serving a WSGI hello
  app; its access log is off by default.  Pinning the master (``--cpu``) puts
  both workers on the same core.  A sync worker answers ``Connection: close``
  to every request: one request per connection.
- ``gunicorn-gthread``: the same app and 2 workers with gunicorn's threaded
  worker class (``gthread``), 32 threads per worker (``threads``), keep-alive on
  with gunicorn's default ``keepalive`` of 2 s (a connection idle for 2 s is
  closed; wrk's never are): gunicorn's own worker threads with keep-alive, the
  like-for-like baseline of ``runtime-prefork-http-threads`` (2 workers x 32
  threads).  A gthread worker accepts up to ``worker_connections`` (1000)
  connections and parks the idle keep-alive ones in its poller, so its thread
  count does not bound the connections it serves.

Like ``echo_servers.py``, the baselines never import ``runtime``.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from echo_servers import (
    ADDRESS,
    REQUEST_QUEUE_SIZE,
    parse_args,
    prepare_process,
    serve,
    watch_parent,
)

BODY = b"hello, world\n"
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 32  # gthread: per worker, as runtime-prefork-http-threads


class HelloHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # no stderr line per request, in any server


class StdlibHTTP(http.server.ThreadingHTTPServer):
    request_queue_size = REQUEST_QUEUE_SIZE


class StdlibHTTPNoDelay(StdlibHTTP):
    def get_request(self) -> tuple[socket.socket, Any]:
        request, client_address = super().get_request()
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return request, client_address


def _runtime_http(
    traced: bool = False, access: bool = False, untraced: bool = False
) -> socketserver.TCPServer:
    import runtime_settings  # imports runtime, from this checkout

    import runtime

    base: type = runtime.instrument(http.server.ThreadingHTTPServer)

    class Server(base):  # type: ignore[misc]
        request_queue_size = REQUEST_QUEUE_SIZE
        access_log = access

    telemetry = runtime_settings.everything_on() if traced else runtime_settings.lean()
    if untraced:
        telemetry = runtime.Telemetry()
    extra = {"logger": runtime_settings.json_file_logger(None)} if access else {}
    server: socketserver.TCPServer = Server(ADDRESS, HelloHandler, telemetry=telemetry, **extra)
    return server


SERVERS: dict[str, Callable[[], socketserver.TCPServer]] = {
    "stdlib-http": lambda: StdlibHTTP(ADDRESS, HelloHandler),
    "stdlib-http-nodelay": lambda: StdlibHTTPNoDelay(ADDRESS, HelloHandler),
    "runtime-http": _runtime_http,
    "runtime-http-metrics": lambda: _runtime_http(untraced=True),
    "runtime-http-traced": lambda: _runtime_http(traced=True),
    "runtime-http-access": lambda: _runtime_http(access=True),
}
#: gunicorn's servers: the settings that differ from run_gunicorn's common ones.
GUNICORN: dict[str, dict[str, Any]] = {
    "gunicorn-sync": {"worker_class": "sync"},
    "gunicorn-gthread": {"worker_class": "gthread", "threads": GUNICORN_THREADS},
}


# -- gunicorn ----------------------------------------------------------------------------


def wsgi_hello(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def _print_port(arbiter: Any) -> None:
    """gunicorn's ``when_ready`` hook: the master listens; tell the harness where."""
    port = arbiter.LISTENERS[0].sock.getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()


def run_gunicorn(worker: dict[str, Any], *, parent_watch: bool) -> None:
    """gunicorn's arbiter with 2 workers (the *worker* settings, e.g. the worker class)
    on 127.0.0.1:0, until SIGTERM (graceful)."""
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    class Hello(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings: dict[str, Any] = {
                "bind": [f"{ADDRESS[0]}:{ADDRESS[1]}"],
                "workers": GUNICORN_WORKERS,
                "backlog": REQUEST_QUEUE_SIZE,
                "when_ready": _print_port,
                **worker,
            }
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24 (?)
                settings["control_socket_disable"] = True  # no socket in ~/.gunicorn
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Callable[..., Iterable[bytes]]:
            return wsgi_hello

    if parent_watch:
        watch_parent()
    Hello().run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, [*SERVERS, *GUNICORN], __doc__)
    prepare_process(args.cpu)
    if args.name in GUNICORN:
        run_gunicorn(GUNICORN[args.name], parent_watch=args.exit_on_stdin_eof)
    else:
        serve(SERVERS[args.name], parent_watch=args.exit_on_stdin_eof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
