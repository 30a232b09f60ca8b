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
- each completed HTTP request is progress for ``/livez``.

For every ``http.server.BaseHTTPRequestHandler`` subclass (so ``wsgiref`` and
``xmlrpc.server`` too), :func:`install` wraps three methods of the handler
*instance* while it runs (the class is untouched; ``type(handler)`` is the
user's): ``handle_one_request`` (the boundary), ``parse_request`` (a request
line arrived: no longer idle) and ``end_headers`` (add ``Connection: close``
during a drain).  An idle connection is ended with ``shutdown(SHUT_RD)``: the
handler's blocking read returns what the kernel already holds (a request
already sent is still served) and then end-of-file, so it closes the
connection the way it closes any connection the client ended.  One race is
left, as in every HTTP server: a request that arrives in the instant after
that end-of-file finds the connection closed, and HTTP clients retry it.
"""

from __future__ import annotations

import http.server
import socket
from time import monotonic
from typing import TYPE_CHECKING, Any

from ._record import RequestRecord

if TYPE_CHECKING:
    from ._served import ServedServer

__all__ = ["install", "is_http", "stop_reading"]


def is_http(handler: object) -> bool:
    return isinstance(handler, http.server.BaseHTTPRequestHandler)


def stop_reading(request: Any) -> None:
    """Make the handler's next read of *request* return what is queued, then end-of-file."""
    try:
        request.shutdown(socket.SHUT_RD)
    except (OSError, AttributeError):
        pass  # closed already


def install(
    server: ServedServer, handler: Any, record: RequestRecord, request: Any
) -> tuple[str, ...]:
    """Wrap *handler*'s request boundary methods; return the attribute names set."""
    attrs = handler.__dict__
    one_request = handler.handle_one_request
    parse_request = handler.parse_request
    end_headers = handler.end_headers

    def handle_one_request() -> None:
        record.idle_since = monotonic()
        if server.closing_idle:  # draining: serve what was sent already, then stop
            stop_reading(request)
        try:
            one_request()
        finally:
            served = record.idle_since == 0.0
            record.idle_since = 0.0
        if served:
            server.note_progress()
        # A response that went out without "Connection: close" (the drain began while it
        # was written) keeps its connection: the client may be sending on it already.
        # Its next response says close, or the drain ends it once idle.

    def parse() -> bool:
        record.idle_since = 0.0  # a request line arrived
        return bool(parse_request())

    def headers_end() -> None:
        if server.draining and not handler.close_connection:
            handler.send_header("Connection", "close")  # also sets close_connection
        end_headers()

    attrs["handle_one_request"] = handle_one_request
    attrs["parse_request"] = parse
    attrs["end_headers"] = headers_end
    return ("handle_one_request", "parse_request", "end_headers")
