"""What the core does to one request: run its handler with timed hooks, count its bytes.

Private helpers of :mod:`runtime.server`, kept apart so that module stays the
hook chain and the serving loop.
"""

from __future__ import annotations

import errno
import functools
import select
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._record import RequestRecord

if TYPE_CHECKING:
    from ._served import ServedServer

__all__ = ["HANDLER_HOOKS", "early_end", "handler_plan", "logger_enabled", "timed_hook"]

HANDLER_HOOKS = ("setup", "handle", "finish")


# How to run a RequestHandlerClass with its hooks timed: (class, partial args,
# partial keywords), or None to call it as it is (not a plain class).
HandlerPlan = tuple[type, tuple[Any, ...], dict[str, Any]] | None


def handler_plan(factory: Any) -> HandlerPlan:
    cls, args, keywords = factory, (), {}
    if isinstance(factory, functools.partial):  # http.server's way to pass directory=
        cls, args, keywords = factory.func, factory.args, dict(factory.keywords)
    if (
        isinstance(cls, type)
        and cls.__new__ is object.__new__  # type: ignore[comparison-overlap]
        and all(callable(getattr(cls, hook, None)) for hook in HANDLER_HOOKS)
    ):
        return cls, args, keywords
    return None


def timed_hook(
    server: ServedServer, record: RequestRecord | None, name: str, method: Callable[[], Any]
) -> Any:
    start = perf_counter()
    try:
        return method()
    except BaseException as exc:
        if record is not None:
            record.fail(name, exc)
            if not record.ended:  # now, while the handler's files still point at the socket
                record.ended = early_end(exc, record.request)
        raise
    finally:
        server.timed_hook(record, name, start, perf_counter())


def logger_enabled(logger: Any, level: int) -> bool:
    check = getattr(logger, "is_enabled_for", None)
    return bool(check(level)) if check is not None else True


# The peer reset, closed or broke the connection: the client's doing, not the server's.
_PEER_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_PEER_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN})
_POLL_GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def early_end(exc: BaseException | None, request: Any) -> str:
    """Why a request that raised *exc* ended, when it was not the server's fault.

    ``"client_closed"``: a reset, broken pipe or abort on the client's own
    connection (raised by an operation on it, or the connection is gone);
    ``"timed_out"``: a time-out raised by an operation on the client's
    connection (its idle limit, ``connection_timeout``).  ``""`` otherwise: the
    same exceptions raised by the handler's own connections to other services
    are the server's errors.
    """
    if exc is None or isinstance(request, tuple):  # datagrams have no connection to lose
        return ""
    if isinstance(exc, TimeoutError):
        return "timed_out" if _raised_on(exc, request) else ""
    peer = isinstance(exc, _PEER_ERRORS) or (isinstance(exc, OSError) and exc.errno in _PEER_ERRNOS)
    if peer and (_raised_on(exc, request) or _peer_gone(request)):
        return "client_closed"
    return ""


def _raised_on(exc: BaseException, request: Any) -> bool:
    """Whether the innermost frame of *exc* was operating on *request* (or its file wrapper)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    for value in tb.tb_frame.f_locals.values():
        if value is request or getattr(value, "_sock", None) is request:
            return True
    return False


def _peer_gone(request: Any) -> bool:
    """Whether the peer of a connected socket has closed or reset it (a poll that never waits)."""
    try:
        fd = request.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, _POLL_GONE)
    try:
        return any(events & _POLL_GONE for _, events in poller.poll(0))
    except OSError:
        return False
