"""HTTP awareness over the hooks: where one request ends and the next begins.

A socketserver "request" is a connection; an ``http.server`` handler serves
many HTTP requests on one keep-alive connection, and between them it waits,
idle, for the next one.  The runtime needs to know that moment:

- a drain closes connections that are idle between requests when the listener
  closes (instead of waiting ``graceful_timeout`` for clients that may never
  send again, then counting them as forced); from the start of the drain every
  response says ``Connection: close`` and its connection ends after it;
- when the thread pool is full and connections wait for a thread, keep-alive
  connections idle for a while give theirs up (as nginx reuses its idle
  keep-alive connections when it runs out);
- each completed HTTP request is progress for ``/livez``;
- each HTTP request is an operation (:mod:`runtime._operation`): its own
  duration, status, route, SERVER span (whose parent is the caller's trace
  context, from the request headers) and access line.

For every ``http.server.BaseHTTPRequestHandler`` subclass (so ``wsgiref`` and
``xmlrpc.server`` too), :func:`install` wraps methods of the handler
*instance* while it runs (the class is untouched; ``type(handler)`` is the
user's): ``handle_one_request`` (the boundary), ``parse_request`` (a request
arrived: no longer idle; the request begins), ``send_response_only`` and
``log_request`` (the status: ``wsgiref`` passes the application's status to
``log_request``), ``end_headers`` (add ``Connection: close`` during a drain;
the body starts), ``setup`` (count the bytes written to ``wfile``) and, when
the runtime writes access lines and the class keeps the standard ones,
``log_request`` (the access line replaces it) and ``log_message`` (a
structured line through the runtime's logger instead of stderr text).  A
request ends when ``handle_one_request`` returns, or when the handler ends
(``wsgiref`` and other handlers that override ``handle``).

One more, for speed alone: ``date_time_string`` (the ``Date`` header of every
response) formats the date once a second instead of once a response, when the
class keeps the standard one.  The header is the same string: the format has
whole seconds.  Called with a timestamp (``Last-Modified``), it is the standard one.

An idle connection is ended with ``shutdown(SHUT_RD)``: the handler's blocking
read returns what the kernel already holds (a request already sent is still
served) and then end-of-file, so it closes the connection the way it closes
any connection the client ended. One race is left, as in every HTTP server: a
request that arrives in the instant after that end-of-file finds the
connection closed, and HTTP clients retry it.
"""

from __future__ import annotations

import email.utils
import http.server
import socket
import socketserver
import sys
from time import monotonic, perf_counter, time, time_ns
from typing import TYPE_CHECKING, Any

from . import _operation
from ._net import format_address
from ._record import Operation, RequestRecord, current_operation

if TYPE_CHECKING:
    from ._served import ServedServer

__all__ = ["HttpConnection", "install", "is_http", "stop_reading"]

_BASE = http.server.BaseHTTPRequestHandler
#: Methods whose requests carry no body (their Content-Length is not read).
_BODYLESS = frozenset(("GET", "HEAD", "OPTIONS", "DELETE", "TRACE"))


#: (second, the Date header's value for it): the latest formatted.
_date: tuple[int, str] = (0, "")


def date_time_string(timestamp: float | None = None) -> str:
    """``BaseHTTPRequestHandler.date_time_string``, formatting "now" once a second."""
    global _date
    if timestamp is not None:
        return email.utils.formatdate(timestamp, usegmt=True)
    now = time()
    second, value = _date
    if int(now) != second:
        value = email.utils.formatdate(now, usegmt=True)
        _date = (int(now), value)  # one assignment: a thread reads the old pair or the new
    return value


def is_http(handler: object) -> bool:
    return isinstance(handler, http.server.BaseHTTPRequestHandler)


def stop_reading(request: Any) -> None:
    """Make the handler's next read of *request* return what is queued, then end-of-file."""
    try:  # socket.socket's own shutdown: a TLS socket's would also drop its TLS state
        socket.socket.shutdown(request, socket.SHUT_RD)
    except (OSError, AttributeError, TypeError):
        pass  # closed already, or not a socket


class _CountingWriter:
    """The handler's ``wfile``, counting the bytes written through it."""

    __slots__ = ("_raw", "count")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.count = 0

    def write(self, data: Any) -> Any:
        written = self._raw.write(data)
        self.count += written if isinstance(written, int) else len(data)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _CountingSocketWriter(socketserver._SocketWriter):  # type: ignore[name-defined,misc]
    """``http.server``'s own unbuffered ``wfile`` (``socketserver._SocketWriter``), counting:
    one Python call per write, where a wrapper around it would make two."""

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        self.count = 0

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            n: int = view.nbytes
        self.count += n
        return n


class HttpConnection:
    """One HTTP connection's state while its handler runs: the request in progress."""

    __slots__ = ("access", "handler", "names", "op", "record", "server", "tel", "writer")

    def __init__(
        self, server: ServedServer, handler: Any, record: RequestRecord, access: bool = True
    ) -> None:
        self.server = server
        self.handler = handler
        self.record = record
        self.access = access  # the runtime writes an access line per request
        self.tel = server.server_telemetry  # the connection's, for each of its requests
        self.op: Operation | None = None
        self.writer: _CountingWriter | _CountingSocketWriter | None = None
        self.names: tuple[str, ...] = ()

    def begin(self, start: float, wall_ns: int, parsed: bool) -> Operation:
        """The request whose line (and, if *parsed*, headers) the handler has read."""
        handler = self.handler
        op = Operation(self.record, "http", start, wall_ns)
        headers = handler.headers if parsed else None
        if getattr(handler, "command", None):  # else its path is the previous request's
            op.path = (getattr(handler, "path", "") or "").partition("?")[0]
        version = getattr(handler, "request_version", "") or ""
        if version.startswith("HTTP/"):
            op.protocol = version[5:]
        if headers is not None:
            op.method = handler.command or ""
            op.headers = headers  # the user agent is read when a span or a line needs it
            if op.method not in _BODYLESS:
                op.body_in = _content_length(headers)
        writer = self.writer
        op.bytes_out = writer.count if writer is not None else 0
        self.op = op
        return _operation.begin(self.server, op, headers if headers is not None else {}, self.tel)

    def finish(self, exc: BaseException | None = None) -> None:
        """End the request in progress, if any (*exc*: what it raised)."""
        op = self.op
        if op is None:
            return
        self.op = None
        writer = self.writer
        count = writer.count if writer is not None else 0
        if op.headers_out >= 0 and op.body_out is None:
            op.body_out = count - op.headers_out
        op.bytes_out = count - op.bytes_out  # began as the count at its start
        _operation.end(self.server, op, exc, self.tel, self.access)


def _content_length(headers: Any) -> int | None:
    if headers is None:
        return None
    value = headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        return None
    return length if length >= 0 else None


def install(
    server: ServedServer,
    handler: Any,
    record: RequestRecord,
    request: Any,
    access: bool,
    measure: bool = True,
) -> HttpConnection:
    """Wrap *handler*'s request boundary methods (*access*: the runtime writes access lines;
    *measure*: each request is an operation, False when nothing would report it: a
    drop-in without telemetry nor access lines keeps only the drain's wrappers)."""
    measure = measure or access
    conn = HttpConnection(server, handler, record, access)
    attrs = handler.__dict__
    cls = type(handler)
    one_request = handler.handle_one_request
    parse_request = handler.parse_request
    end_headers = handler.end_headers
    send_response_only = handler.send_response_only
    log_request = handler.log_request
    setup = attrs.get("setup", handler.setup)
    replace_log = access and cls.log_request is _BASE.log_request
    structured = access and cls.log_message is _BASE.log_message
    note_progress = server.note_progress

    def handle_one_request() -> None:
        record.idle_since = monotonic()
        if server.closing_idle:  # draining: serve what was sent already, then stop
            stop_reading(request)
        try:
            one_request()
        except BaseException as exc:
            conn.finish(exc)
            raise
        finally:
            served = record.idle_since == 0.0
            record.idle_since = 0.0
        if conn.op is not None:
            conn.finish()
        if served:
            note_progress()
        # A response that went out without "Connection: close" (the drain began while it
        # was written) keeps its connection: the client may be sending on it already.
        # Its next response says close, or the drain ends it once idle.

    def parse() -> bool:
        record.idle_since = 0.0  # a request line arrived
        if not measure:
            return bool(parse_request())
        start, wall = perf_counter(), time_ns()
        ok = bool(parse_request())
        op = conn.op
        if op is None:
            conn.begin(start, wall, ok)
        elif ok:  # begun by a 1xx sent while parsing (Expect: 100-continue)
            op.method = handler.command or ""
        return ok

    def response_only(code: Any, message: Any = None) -> None:
        status = int(code) if isinstance(code, int) else 0
        if status >= 200:
            op = conn.op or conn.begin(perf_counter(), time_ns(), False)  # e.g. a 414
            op.status = status
        send_response_only(code, message)

    def log_req(code: Any = "-", size: Any = "-") -> None:
        op = conn.op
        if op is not None:
            try:
                status = int(code)
            except (TypeError, ValueError):
                status = 0
            if status >= 200:
                op.status = status
            if isinstance(size, int) or (isinstance(size, str) and size.isdigit()):
                op.body_out = int(size)  # wsgiref: the body bytes sent
        if not replace_log:  # the class's own log_request
            log_request(code, size)

    def headers_end() -> None:
        if server.draining and not handler.close_connection:
            handler.send_header("Connection", "close")  # also sets close_connection
        end_headers()
        op = conn.op
        if op is not None:
            writer = conn.writer
            op.headers_out = writer.count if writer is not None else 0

    def timed_setup() -> None:
        setup()
        wfile = getattr(handler, "wfile", None)
        if wfile is not None and type(wfile) is socketserver._SocketWriter:  # type: ignore[attr-defined]
            conn.writer = handler.wfile = _CountingSocketWriter(wfile._sock)
        elif wfile is not None and not isinstance(wfile, (_CountingWriter, _CountingSocketWriter)):
            conn.writer = _CountingWriter(wfile)
            handler.wfile = conn.writer

    def log_message(format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        try:
            message = format % args
        except (TypeError, ValueError):
            message = format
        server.logger.info(
            message,
            server=server.server_label,
            client=format_address(handler.client_address),
        )

    attrs["handle_one_request"] = handle_one_request
    attrs["parse_request"] = parse
    attrs["end_headers"] = headers_end
    names = ["handle_one_request", "parse_request", "end_headers"]
    if cls.date_time_string is _BASE.date_time_string:
        attrs["date_time_string"] = date_time_string
        names.append("date_time_string")
    if measure:
        attrs["send_response_only"] = response_only
        attrs["setup"] = timed_setup
        names += ["send_response_only", "setup"]
        # http.server's status reaches send_response_only; wsgiref's only log_request (from
        # its ServerHandler); the runtime's access line replaces the standard log_request.
        if replace_log or cls.send_response_only.__module__ != "http.server" or _wsgi(cls):
            attrs["log_request"] = log_req
            names.append("log_request")
        if hasattr(server, "_marshaled_dispatch"):  # xmlrpc.server: the method is the route
            _xmlrpc_routes(server)
    if structured:
        attrs["log_message"] = log_message
        names.append("log_message")
    conn.names = tuple(names)
    return conn


def _wsgi(cls: type) -> bool:
    """Whether *cls* is wsgiref's handler, whose status only log_request is told."""
    wsgiref = sys.modules.get("wsgiref.simple_server")
    return wsgiref is not None and issubclass(cls, wsgiref.WSGIRequestHandler)


def _xmlrpc_routes(server: Any) -> None:
    """Wrap the XML-RPC server's ``_dispatch`` once: the method called is the request's
    route (when the server knows it: a client cannot mint routes) and a fault is an error."""
    if "_dispatch" in server.__dict__:
        return
    dispatch = server._dispatch

    def routed(method: str, params: Any) -> Any:
        op = current_operation.get()
        outer = op is not None and not op.route  # system.multicall's calls are its own
        if outer and op is not None and _xmlrpc_known(server, method):
            op.route = method
        try:
            return dispatch(method, params)
        except BaseException as exc:
            if outer and op is not None and not op.error_type:
                op.error_type = "Fault" if type(exc).__name__ == "Fault" else type(exc).__name__
            raise

    server._dispatch = routed


def _xmlrpc_known(server: Any, method: str) -> bool:
    if method in getattr(server, "funcs", {}):
        return True
    instance = getattr(server, "instance", None)
    if instance is None or hasattr(instance, "_dispatch"):
        return False  # an instance's own _dispatch takes any name
    try:
        from xmlrpc.server import resolve_dotted_attribute

        resolve_dotted_attribute(instance, method, getattr(server, "allow_dotted_names", False))
    except Exception:  # noqa: BLE001 - not a method the server has
        return False
    return True
