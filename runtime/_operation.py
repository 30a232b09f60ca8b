"""Operations: the unit of work inside a connection.

A socketserver "request" is a connection.  Protocols that carry many requests
on one connection get a second unit inside it, an :class:`~runtime._record.Operation`:
each HTTP request of an ``http.server`` handler (see :mod:`runtime._http`), or
each command a handler of another protocol marks with :func:`operation`.  An
operation has its own duration metric, SERVER span and access line; the
connection keeps its own (``socketserver_*`` families, its span, hooks).

The public API (re-exported by ``runtime``) is for handler code:
:func:`set_route` (the low-cardinality route of the current HTTP request),
:func:`set_attributes` (on the current operation's span and access line) and
:func:`operation` (mark a command of another protocol).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from time import perf_counter, time_ns
from typing import TYPE_CHECKING, Any

from ._record import Operation, bind, current_operation, current_request, span_values
from ._request import early_end

if TYPE_CHECKING:
    from ._served import ServedServer
    from .telemetry.api import ServerTelemetry

__all__ = ["begin", "end", "operation", "set_attributes", "set_route"]


def begin(
    server: ServedServer, op: Operation, carrier: Any = None, tel: ServerTelemetry | None = None
) -> Operation:
    """Start *op* (made by the caller, its request fields set) and make it current.

    *carrier*: the request's headers, for the caller's trace context (None: the
    operation's span is a child of the current span, the connection's).  *tel*: the
    server's telemetry, when the caller holds it already.
    """
    if tel is None:
        tel = server.server_telemetry
    op.token = (tel.operation_started(op, carrier), current_operation.set(op))
    return op


def end(
    server: ServedServer,
    op: Operation,
    exc: BaseException | None = None,
    tel: ServerTelemetry | None = None,
    access: bool = True,
) -> None:
    """Finish *op* (once): its outcome, metrics, span and access line.

    *exc*: what the operation raised, if anything: the server's error, unless the
    client left or a time limit ended it (then ``client_closed``/``timed_out``).
    A 5xx status is the server's error too; a 4xx is the client's.  *tel*: as for
    :func:`begin`; *access*: False when the caller knows no access line is written.
    """
    if op.token is None:
        return
    stop = perf_counter()
    tel_token, var_token = op.token
    op.token = None
    if exc is not None or op.status >= 500:
        _outcome(op, exc)
    if tel is None:
        tel = server.server_telemetry
    try:
        op.record.operations += 1
        tel.operation_finished(op, stop)
        if access:
            server.operation_finished(op, stop)  # its access line, while its span is current
    finally:
        try:
            current_operation.reset(var_token)
        except ValueError:  # ended in another context than it began (a handler's own thread)
            current_operation.set(None)
        if tel_token is not None:
            try:
                tel.deactivate(tel_token)
            except ValueError:
                pass
        op.error = None  # its traceback holds the handler's frames


def _outcome(op: Operation, exc: BaseException | None) -> None:
    """*op*'s failure, if any: what it raised (unless the client left or a time limit
    ended it), else a 5xx status."""
    if exc is not None and not op.error_type and not op.ended:
        ended = early_end(exc, op.record.request)
        if ended:
            op.ended = ended
        else:
            op.error = exc
            op.error_type = type(exc).__name__
    if not op.error_type and not op.ended and op.status >= 500:
        op.error_type = str(op.status)


def set_route(route: str) -> None:
    """Set the route of the current HTTP request (or the name of the current operation).

    A route is the template, low in cardinality: ``"/users/{id}"``, never the
    raw path.  It becomes the ``http_route`` label, the span's ``http.route``
    and name (``GET /users/{id}``) and the access line's ``route``.  Outside an
    operation (or a request) it does nothing.
    """
    if not isinstance(route, str):
        raise TypeError(f"route must be a str, not {type(route).__name__}")
    op = current_operation.get()
    if op is not None:
        op.route = route


def set_attributes(**attributes: Any) -> None:
    """Add *attributes* to the current operation's span and access line.

    Inside an HTTP request (or a marked operation), they go to that request's
    span and access line; otherwise to the connection's (its span, and every
    log line of it, as :func:`runtime.bind`).  Outside a handler it raises
    ``RuntimeError``.
    """
    op = current_operation.get()
    if op is not None:
        if op.attributes is None:
            op.attributes = {}
        op.attributes.update(attributes)
        return
    record = current_request.get()
    if record is None:
        raise RuntimeError("runtime.set_attributes() called outside a request handler")
    bind(**attributes)  # every line of the connection, its access line included
    span = record.span
    if span is not None and span.is_recording():
        span.set_attributes(span_values(attributes))


@contextlib.contextmanager
def operation(
    name: str, *, carrier: Mapping[str, str] | None = None, **attributes: Any
) -> Iterator[Operation]:
    """Mark one command of a long-lived connection as an operation of its own.

    ``with runtime.operation("GET", key=key): ...`` inside a handler gives the
    command a duration (``socketserver_operation_duration_seconds{operation,
    outcome}``), a SERVER span named *name* (a child of the connection's span,
    or of the caller's context found in *carrier* by the configured
    propagators), current while the block runs, and an access line
    (``event="operation"``).  An exception raised in the block is the
    operation's error (unless the client left: ``client_closed``) and is raised
    on.  *name* should be low in cardinality: a command, not its argument.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("an operation needs a name (a non-empty str)")
    record = current_request.get()
    server = record.owner if record is not None else None
    if record is None or server is None:
        raise RuntimeError("runtime.operation() used outside a request handler")
    op = begin(server, Operation(record, name, perf_counter(), time_ns()), carrier)
    if attributes:
        op.attributes = dict(attributes)
    try:
        yield op
    except BaseException as exc:
        end(server, op, exc)
        raise
    end(server, op)
