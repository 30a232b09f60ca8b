"""The admin side port: the status page, ``/metrics``, ``/livez``, ``/readyz``.

Its own small HTTP server on a daemon thread, never counted as application
traffic (no telemetry, no access log).  Bounded, so a slow or hostile peer
cannot pin it: 4 reused threads and a queue of 16 (more connections are
closed at once, the accept loop never waits), one request per connection,
a 64 KiB request line and 100 headers at most (http.server's limits), and a
total of ``request_timeout`` seconds per request, enforced by a watchdog.

- ``/livez``: 200 while the serving loop makes progress; stays 200 while draining.
- ``/readyz``: 200 while serving; 503 from the moment a drain begins.
- ``/metrics``: Prometheus text, or OpenMetrics when the scraper asks for it.
- ``/``: a live status page (``/status.json`` and two static files, all served
  from the package: no outside service, no CDN; a strict Content-Security-Policy).

Unknown paths get 404, methods other than GET and HEAD get 405.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from .lifecycle import Lifecycle
from .pools import ThreadingMixIn
from .server import InstrumentedMixIn
from .status import StatusBoard
from .watchdog import Watchdog

__all__ = ["AdminServer"]

RenderMetrics = Callable[[str], tuple[bytes, str]]

#: path -> (file in runtime/static, content type)
STATIC = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
}
#: The page loads nothing from anywhere else, and runs no inline code.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PATHS = ["/", "/status.json", "/metrics", "/livez", "/readyz"]


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("runtime") / "static"
    return {path: ((folder / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}


class _AdminHTTPServer(ThreadingMixIn, InstrumentedMixIn, http.server.HTTPServer):
    max_children = 4
    queue_size = 16
    overload = "reject"
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64
    access_log = False
    connection_timeout = 5.0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A probe or scraper that hangs up early is not an error worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _AdminHandler(http.server.BaseHTTPRequestHandler):
    server: _AdminHTTPServer
    # One request per connection: an idle keep-alive connection would hold a worker.
    protocol_version = "HTTP/1.0"
    server_version = "socketserver-runtime-admin"

    _replied = False

    def do_GET(self) -> None:
        try:
            self._route()
        except Exception as exc:
            # A scrape that fails says so (Prometheus shows the status); the
            # traceback goes to the log through handle_error.
            if not self._replied:
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
            raise

    def _route(self) -> None:
        admin: AdminServer = self.server.admin  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = admin.render_metrics(self.headers.get("Accept", ""))
            self._reply(200, body, content_type)
        elif path == "/livez":
            live = admin.lifecycle.live()
            self._json(200 if live else 503, {
                "status": "ok" if live else "stalled",
                "state": admin.lifecycle.state.value,
                "heartbeat_age_seconds": round(admin.lifecycle.heartbeat_age(), 3),
            })  # fmt: skip
        elif path == "/readyz":
            ready = admin.lifecycle.ready()
            self._json(200 if ready else 503, {
                "status": "ready" if ready else "not ready",
                "state": admin.lifecycle.state.value,
            })  # fmt: skip
        elif path == "/status.json" and admin.status is not None:
            self._json(200, admin.status.snapshot())
        elif path in admin.static and admin.status is not None:
            body, content_type = admin.static[path]
            self._reply(200, body, content_type, {
                "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            })  # fmt: skip
        else:
            self._json(404, {"error": "not found", "paths": PATHS})

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _not_allowed(self) -> None:
        self._json(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD"})

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler looks up do_<METHOD>; every other method is 405, not 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        body = (json.dumps(payload) + "\n").encode()
        self._reply(status, body, "application/json", headers)

    def _reply(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self._replied = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # probes every few seconds would drown the logs


class AdminServer:
    """Serve the probes and metrics of one runtime on *address* (host, port).

    Binding happens in the constructor (so a taken port fails early, before
    the application server starts); :meth:`start` begins serving.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        lifecycle: Lifecycle,
        render_metrics: RenderMetrics,
        status: StatusBoard | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        self.lifecycle = lifecycle
        self.render_metrics = render_metrics
        self.status = status
        self.static = _static_files() if status is not None else {}
        self._httpd = _AdminHTTPServer(address, _AdminHandler, server_name="admin")
        self._httpd.admin = self  # type: ignore[attr-defined]
        self._watchdog = Watchdog(self._httpd, timeout=request_timeout)
        self._thread: threading.Thread | None = None

    @property
    def socket(self) -> Any:
        """The listening socket (a pre-fork worker closes its copy)."""
        return self._httpd.socket

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        if self.status is not None:
            self.status.start()
        self._watchdog.start()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
            name="runtime-admin", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
        self._watchdog.stop()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()
