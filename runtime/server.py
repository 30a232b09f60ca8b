"""The instrumented hook chain: a mix-in over any ``socketserver.BaseServer``.

Put :class:`InstrumentedMixIn` first in the bases of any socketserver server
(``http.server.HTTPServer``, ``xmlrpc.server.SimpleXMLRPCServer``, your own)
and every lifecycle hook is timed, counted and placed in the request's trace,
without editing the server or its handler.  :func:`runtime.instrument` builds
such a class for you.

Two rules say where each hook is measured:

- the loop times what it calls: ``get_request``, ``verify_request``,
  ``process_request``, ``service_actions``, ``handle_timeout`` (so overrides of
  them anywhere in the MRO are inside the measurement);
- the request hooks time themselves: ``finish_request``, ``shutdown_request``,
  ``handle_error`` and the handler's ``setup``/``handle``/``finish`` (they are
  called by pools, forked children and foreign mix-ins alike).

Methods for the caller (beyond socketserver's):

- ``runtime_stats()`` -> gauges pulled at scrape time
- ``accept_backlog()``, ``close_listener()``, ``wait_for_idle(deadline)``,
  ``force_close()`` -> the steps of a graceful drain (see ``lifecycle.py``)

Class variables that may be overridden:

- ``server_label``: the ``server`` label (default: the class name; the
  ``server_name=`` constructor argument sets it.  Not ``server_name``, which
  ``http.server.HTTPServer`` uses for the host name)
- ``tcp_nodelay``: set TCP_NODELAY on accepted TCP connections (default True)
- ``accept_batch``: connections (or datagrams) the serving loop takes, one
  after the other, each time it wakes and finds the socket readable, until
  the queue is empty (default 16; 1: one per ``select``, as the standard
  library).  Under load it saves a ``select`` and a loop turn per request;
  a thread pool that is full, a drain or ``shutdown()`` ends the batch early
- ``access_log``: one structured log line per request: True, False, or None (the
  default): only when the server has telemetry (``telemetry=``), so a drop-in server
  that only changed its import prints nothing per request, as the standard library
- ``connection_timeout``: seconds an accepted stream connection may sit idle
  in a blocking read or write (default None, as in the standard library; the
  CLI sets 60).  A handler's own ``timeout`` attribute takes precedence.
- ``header_timeout``: seconds a new stream connection may take to deliver its
  request head before it is closed (default None: no limit and no waiting, as
  in the standard library; the CLI sets 10).  While it arrives the connection
  waits in the serving loop, not in a worker: see ``runtime/_admission.py``.
  Applies to ``http.server`` handlers, and to handlers that declare
  ``request_head_end`` (bytes that end what the client sends first, e.g.
  ``b"\n"`` for a line protocol; ``b""``: any byte)
- ``max_awaiting``: connections that may wait so at once (default 1024, and
  at most a quarter of the file descriptor limit)

Draining (driven by ``lifecycle.Runtime``): ``begin_drain()`` when readiness
fails; ``draining`` is True from then on (``http.server`` handlers answer with
``Connection: close`` and close after the response in progress).
``close_idle()`` when the listener closes: connections idle between requests
end at once; for other protocols the handler's ``handle_drain()`` method, if
it has one, is called (from the runtime's thread) so it can finish its current
command and close.

Unlike the standard library, ``shutdown()`` called from the serving thread
(for example from a handler in a synchronous server) does not deadlock: it
asks the loop to stop and returns.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import selectors
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from time import monotonic, perf_counter, time, time_ns
from typing import TYPE_CHECKING, Any, Protocol

from . import _http
from ._admission import AcceptBackoff, AwaitingRequests, request_head_end
from ._net import accept_queue_length, format_address, request_bytes
from ._proxy import ProxyError, Trusted, read_header
from ._record import Operation, RequestRecord, current_request
from ._request import HANDLER_HOOKS, early_end, handler_plan, logger_enabled, timed_hook
from ._served import LoopController, ServedServer
from .telemetry.api import NULL, ServerTelemetry
from .telemetry.logging import AccessWriter, access_writer

if TYPE_CHECKING:
    import structlog.typing

__all__ = ["InstrumentedMixIn", "LoopController", "ServedServer", "TelemetryFactory"]


_ServerSelector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)
# Decrementing "references" of a record: the accept loop and shutdown_request
# each release once; whoever pops the last (0) finishes the record.  list.pop
# is atomic, so no lock is needed for the hand-over between threads.
_LAST, _NOT_LAST = 0, 1
#: Seconds a PROXY header may take when there is no header_timeout.
_PROXY_TIMEOUT = 10.0
_TAKEN, _EMPTY, _FAILED = 1, 0, -1
#: The selector's mark on a listener added with ``add_listener``.
_MORE = object()
#: (``socket`` names the listening socket inside the class.)
_Socket = socket.socket
#: The pool gauges of a status row (``runtime_stats()`` keys).
_STATUS_GAUGES = ("in_flight", "workers_busy", "workers_idle", "workers_max", "queue_depth")
#: Seconds a connection taken from the kernel's queue at a drain has to send its request.
DRAIN_GRACE = 1.0
_MAX_DATAGRAMS_DRAINED = 65536
_MAX_ACCEPT_FAILURES = 8


class TelemetryFactory(Protocol):
    """What a server needs to get its bound telemetry (see ``runtime.telemetry``)."""

    def bind(self, server: Any) -> ServerTelemetry: ...


def _transport(family: int, kind: int) -> str:
    if family == getattr(socket, "AF_UNIX", None):
        return "unix"
    return "udp" if kind == socket.SOCK_DGRAM else "tcp"


class InstrumentedMixIn:
    """Measure and trace every hook of a socketserver server.

    Extra keyword-only constructor arguments (all optional, so the standard
    signatures still hold): ``telemetry`` (a :class:`TelemetryFactory`, e.g.
    ``runtime.Telemetry``), ``logger`` (a structlog logger), ``server_name``.
    """

    server_label: str | None = None
    tcp_nodelay = True
    accept_batch = 16
    _rt_woken = False
    access_log: bool | None = None
    connection_timeout: float | None = None
    header_timeout: float | None = None
    max_awaiting = 1024
    #: TLS: each stream connection's handshake runs on its worker, within header_timeout.
    ssl_context: ssl.SSLContext | None = None
    #: Read a PROXY protocol header first (runtime._proxy), believed from these peers.
    proxy_protocol = False
    proxy_allow_from: str | Iterable[str] = "127.0.0.1"

    # Declared for mypy; socketserver.BaseServer provides these.
    socket: socket.socket
    server_address: Any
    RequestHandlerClass: Any
    timeout: float | None
    request_queue_size: int
    address_family: int
    socket_type: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _constructor_signature(cls)  # type: ignore[attr-defined]

    def __init__(
        self,
        *args: Any,
        telemetry: TelemetryFactory | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        server_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        if server_name is not None:
            self.server_label = server_name
        if ssl_context is not None:
            self.ssl_context = ssl_context
        self._rt_init_state(logger)
        super().__init__(*args, **kwargs)
        if self.server_label is None:
            self.server_label = type(self).__name__
        if telemetry is not None:
            self.use_telemetry(telemetry)

    def _rt_init_state(self, logger: structlog.typing.FilteringBoundLogger | None) -> None:
        """The mix-in's state; ``__getattr__`` makes it when a subclass skipped ``__init__``."""
        self._rt_records: dict[int, RequestRecord] = {}
        self._rt_idle = threading.Condition()
        self._rt_tel: ServerTelemetry = NULL
        self.telemetry: TelemetryFactory | None = None
        self._rt_access = False
        self._rt_handlers: dict[Any, Any] = {}
        self._rt_shutdown_request = False
        self._rt_is_shut_down = threading.Event()
        self._rt_is_shut_down.set()
        self._rt_serving_thread: int | None = None
        self._rt_wakeup: tuple[int, int] | None = None
        self._rt_controller: LoopController | None = None
        self._rt_listening = True
        #: Listening sockets besides ``self.socket`` (``--bind`` given more than once), and
        #: the one ``get_request`` accepts from while the loop serves it (None: ``self.socket``).
        self._rt_more: list[_Socket] = []
        self._rt_from: _Socket | None = None
        self._rt_draining = False
        self._rt_closing_idle = False
        self._rt_progress_at = monotonic()  # a request (or an HTTP request) completed
        self._rt_backoff = AcceptBackoff()
        allowed = self.proxy_allow_from
        self._rt_trusted = Trusted(allowed.split(",") if isinstance(allowed, str) else allowed)
        self._rt_gate: AwaitingRequests | None = None
        self._rt_heads: dict[Any, bytes | None] = {}
        self._rt_truncations = [0, 0.0]  # datagrams cut since the last log line, when logged
        self._rt_reclaimed_at = 0.0
        self._rt_bytes_seen_at = 0.0
        self._rt_forced = False
        if logger is None:
            from .telemetry.logging import default_logger

            logger = default_logger()
        self._rt_access_writer: AccessWriter | None = None
        self.logger = logger

    if not TYPE_CHECKING:  # (hidden from mypy, which would then take any name as Any)

        def __getattr__(self, name: str) -> Any:
            # A subclass whose __init__ calls a base class's by name (BaseServer.__init__(
            # self, ...)) skips ours: the first use of the mix-in's state creates it.  Only
            # reached when an attribute is missing: no cost once the state exists.
            if (name.startswith("_rt_") or name == "telemetry") and self._rt_ensure_state():
                return getattr(self, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _rt_ensure_state(self) -> bool:
        """Make the mix-in's state if ``__init__`` was skipped; True if it was made now."""
        if "_rt_records" in vars(self):
            return False
        self._rt_init_state(None)
        if self.server_label is None:
            self.server_label = type(self).__name__
        return True

    # -- configuration ---------------------------------------------------------

    def add_listener(self, sock: _Socket) -> None:
        """Serve another listening socket too (``--bind`` given more than once).

        *sock* is bound and listening, of this server's socket type; the serving
        loop accepts from it as from ``self.socket``, with the same handler, hooks,
        pool and telemetry, and the drain takes its queue and closes it as well.
        ``self.socket`` and ``server_address`` stay the first address's.  A class
        with its own ``get_request`` (which would accept from ``self.socket``) or
        a datagram server serves one address.
        """
        if self.socket_type != socket.SOCK_STREAM or sock.type != socket.SOCK_STREAM:
            raise ValueError("only a stream server serves more than one address")
        if type(self).get_request is not InstrumentedMixIn.get_request:
            raise ValueError(
                f"{type(self).__name__} has its own get_request: it serves one address"
            )
        sock.setblocking(False)  # taken in batches; an empty queue says so, never blocks
        self._rt_more.append(sock)

    def listeners(self) -> list[_Socket]:
        """The listening sockets still open: ``self.socket`` first, then the added ones."""
        return [s for s in (self.socket, *self._rt_more) if s.fileno() != -1]

    @property
    def transport(self) -> str:
        """``tcp``, ``udp`` or ``unix``: the ``transport`` label (a bare ``BaseServer``: tcp)."""
        family = getattr(self, "address_family", socket.AF_INET)
        return _transport(family, getattr(self, "socket_type", socket.SOCK_STREAM))

    @property
    def logger(self) -> structlog.typing.FilteringBoundLogger:
        """The server's structlog logger (lifecycle, errors, access lines)."""
        return self._rt_logger

    @logger.setter
    def logger(self, logger: structlog.typing.FilteringBoundLogger) -> None:
        self._rt_logger = logger
        self._rt_access_writer = access_writer(logger)
        self._rt_decide_access()

    def use_telemetry(self, telemetry: TelemetryFactory | None) -> None:
        """Bind this server to *telemetry* (None: no telemetry)."""
        self._rt_ensure_state()
        self.telemetry = telemetry
        self._rt_tel = NULL if telemetry is None else telemetry.bind(self)
        self._rt_decide_access()

    def _rt_decide_access(self) -> None:
        # Decided here, not per request: a filtered level costs nothing per request.
        wanted = self.access_log if self.access_log is not None else self.telemetry is not None
        self._rt_access = bool(wanted) and logger_enabled(self._rt_logger, logging.INFO)

    def set_controller(self, controller: LoopController | None) -> None:
        """Let *controller* act once per loop turn (signals, drain deadlines)."""
        self._rt_controller = controller

    def runtime_stats(self) -> dict[str, float]:
        """Gauges read at scrape time. Pools extend this."""
        return {"in_flight": len(self._rt_records)}

    # -- the core's interface (ServedServer): what the engine, the watchdog, the
    #    pools, the status page and a pre-fork worker read and call ---------------

    #: ``sync``, ``thread`` or ``fork`` (the pools set theirs): the status page's mode.
    runtime_mode = "sync"

    def runtime_status(self) -> dict[str, Any]:
        """The status page's row for this server: name, address, mode, pool gauges."""
        stats = self.runtime_stats()
        return {
            "name": str(self.server_label),
            "transport": self.transport,
            "address": format_address(self.server_address),
            "mode": self.runtime_mode,
            **{key: int(stats.get(key, 0)) for key in _STATUS_GAUGES},
        }

    @property
    def server_telemetry(self) -> ServerTelemetry:
        """The telemetry bound to this server (one that does nothing without ``telemetry=``)."""
        return self._rt_tel

    def requests_in_flight(self) -> list[RequestRecord]:
        """The records of the requests in flight now (a copy: safe from any thread)."""
        return list(self._rt_records.values())

    def in_flight_count(self) -> int:
        """How many requests are in flight now."""
        return len(self._rt_records)

    def request_record(self, request: Any) -> RequestRecord | None:
        """The record of *request* while it is in flight (None once it finished)."""
        return self._rt_records.get(id(request))

    @property
    def closing_idle(self) -> bool:
        """True once the listener closed in a drain: idle connections end now."""
        return self._rt_closing_idle

    def note_progress(self) -> None:
        """A unit of work completed (an HTTP request on a kept-alive connection, say):
        the server is not stalled (see :meth:`stalled_for`)."""
        self._rt_progress_at = monotonic()

    @property
    def drain_forced(self) -> bool:
        """True once :meth:`force_close` cut requests (their threads may not unwind)."""
        return self._rt_forced

    # -- the serving loop --------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle requests until :meth:`shutdown`; woken at once by a pipe, not polled."""
        self._rt_is_shut_down.clear()
        self._rt_serving_thread = threading.get_ident()
        wake = self._rt_wakeup_fd()
        # Batches need a listener that says "empty" instead of blocking.
        blocking = self.socket.gettimeout() is None
        batching = self.accept_batch > 1 and (blocking or self.socket.gettimeout() == 0.0)
        if batching and blocking:
            self.socket.setblocking(False)
        gate = self._rt_open_gate()
        try:
            with _ServerSelector() as selector:
                more = list(self._rt_more)
                _watch_listeners(selector, self, more, True)
                listening = True
                selector.register(wake, selectors.EVENT_READ)
                for fd in self._pool_loop_fds():  # e.g. forked children's report pipes
                    selector.register(fd, selectors.EVENT_READ)
                if gate is not None and gate.fileno() >= 0:
                    selector.register(gate.fileno(), selectors.EVENT_READ)
                while not self._rt_shutdown_request:
                    timeout = self._rt_turn(poll_interval)
                    backoff = self._rt_backoff
                    if backoff.paused or not listening:
                        # Out of fds: stop watching the listener (it stays readable) until
                        # the pause is over or a finished request freed one.
                        now = monotonic()
                        if not backoff.paused or backoff.due(now):
                            if not listening:
                                _watch_listeners(selector, self, more, True)
                                listening = True
                        else:
                            if listening:
                                _watch_listeners(selector, self, more, False)
                                listening = False
                            timeout = _sooner(timeout, backoff.until - now)
                    if gate is not None and len(gate):
                        due = gate.next_timer()
                        if due is not None:
                            timeout = _sooner(timeout, due - monotonic())
                    ready = selector.select(timeout)
                    if self._rt_shutdown_request:
                        break
                    for key, _ in ready:
                        if key.fd == wake:
                            self._rt_woken = False
                            self._rt_drain_wakeup(wake)
                        elif key.fileobj is self:  # type: ignore[comparison-overlap]
                            self._rt_accept_batch(self.accept_batch if batching else 1)
                        elif key.data is _MORE:
                            self._rt_accept_more(key.fileobj, max(self.accept_batch, 1))  # type: ignore[arg-type]
                    if gate is not None and len(gate):
                        gate.service(0.0)  # heads that arrived, deadlines that passed
                    # Also reaps children at once when their pipes are readable.
                    self._rt_service_actions()
        finally:
            if batching and blocking and self.socket.fileno() != -1:
                self.socket.setblocking(True)
            self._rt_shutdown_request = False
            self._rt_serving_thread = None
            self._rt_is_shut_down.set()

    def _rt_open_gate(self) -> AwaitingRequests | None:
        """The connections waiting for their request head (``header_timeout`` set, stream)."""
        if (
            self._rt_gate is None
            and self.header_timeout is not None
            and self.socket_type == socket.SOCK_STREAM
        ):
            self._rt_gate = AwaitingRequests(
                timeout=self.header_timeout,
                ready=self._rt_dispatch,
                expired=self._rt_unpark,
                limit=self.max_awaiting,
            )
        return self._rt_gate

    def _pool_loop_fds(self) -> list[int]:
        """More file descriptors that should wake the serving loop (pools extend this)."""
        return []

    def shutdown(self) -> None:
        """Stop the ``serve_forever`` loop.

        From another thread, wait until the loop has stopped (as the standard
        library does). From the serving thread itself, ask the loop to stop
        after the current turn and return at once instead of deadlocking.
        """
        self._rt_shutdown_request = True
        self.wake()
        if self._rt_serving_thread == threading.get_ident():
            return
        self._rt_is_shut_down.wait()

    def wake(self) -> None:
        """Wake the serving loop (safe from signal handlers and other threads)."""
        self._rt_woken = True  # ends a batch of accepts: the loop has something to do
        if self._rt_wakeup is not None:
            try:
                os.write(self._rt_wakeup[1], b"\0")
            except OSError:  # full pipe: the loop is already due to wake
                pass

    def handle_request(self) -> None:
        """Handle one request, possibly blocking; respects ``self.timeout``."""
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = time() + timeout if timeout is not None else 0.0
        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)  # type: ignore[arg-type]
            while True:
                if selector.select(timeout):
                    self._handle_request_noblock()
                    return
                if timeout is not None:
                    timeout = deadline - time()
                    if timeout < 0:
                        start = perf_counter()
                        try:
                            self.handle_timeout()  # type: ignore[attr-defined]
                        finally:
                            self.timed_hook(None, "handle_timeout", start, perf_counter())
                        return

    def get_request(self) -> Any:
        """As the standard library's; for datagrams, also notice truncation.

        A datagram longer than ``max_packet_size`` reaches the handler cut to
        that size (the standard library does the same, silently); here it is
        counted (``datagrams_truncated_total``) and logged (at most once a minute).
        """
        source = self._rt_from
        if source is not None:  # an added listener's turn
            return source.accept()
        if self.socket_type != socket.SOCK_DGRAM or not _plain_datagram_get_request(type(self)):
            return super().get_request()  # type: ignore[misc]
        size = self.max_packet_size  # type: ignore[attr-defined]
        data, _, flags, client_address = self.socket.recvmsg(size)
        if flags & socket.MSG_TRUNC:
            self._rt_truncated(size, client_address)
        return (data, self.socket), client_address

    def _rt_truncated(self, size: int, client_address: Any) -> None:
        self._rt_tel.datagram_truncated()
        counts = self._rt_truncations
        counts[0] += 1
        now = monotonic()
        if counts[1] and now - counts[1] < 60.0:
            return
        self.logger.warning(
            "datagram truncated",
            server=self.server_label,
            client=format_address(client_address),
            max_packet_size=size,
            truncated=int(counts[0]),  # since the last such line
            hint="the handler saw the first max_packet_size bytes; raise max_packet_size",
        )
        counts[0], counts[1] = 0, now

    def _rt_accept_more(self, sock: _Socket, limit: int) -> None:
        """A batch from an added listener (always non-blocking)."""
        self._rt_from = sock
        try:
            self._rt_accept_batch(limit)
        finally:
            self._rt_from = None

    def _rt_accept_batch(self, limit: int) -> None:
        for i in range(limit):  # the first may wait a little for room, the rest not at all
            if not self._pool_room(0.2 if i == 0 else 0.0):
                return
            if self._rt_accept_one() != _TAKEN or self._rt_woken:
                return  # empty, failing, or woken (a signal, shutdown()): turn now

    def _pool_room(self, wait: float) -> bool:
        """Whether to take a connection now (pools that take only when free say no)."""
        return True

    def _handle_request_noblock(self) -> int:
        return self._rt_accept_one() if self._pool_room(0.2) else _EMPTY

    def _rt_accept_one(self) -> int:
        """Take one connection or datagram through the hook chain.

        Returns ``_TAKEN``, ``_EMPTY`` (the socket would block) or ``_FAILED``
        (``get_request`` raised, counted as an error).
        """
        taken = self._rt_take()
        if isinstance(taken, int):
            return taken
        self._rt_process(*taken)
        return _TAKEN

    def _rt_take(self) -> int | tuple[Any, Any, int, float, float]:
        """``get_request``, timed: (request, client_address, wall, start, end) or a result code."""
        wall = time_ns()
        start = perf_counter()
        try:
            request, client_address = self.get_request()
        except BlockingIOError:
            return _EMPTY
        except OSError as exc:
            self._rt_tel.hook("get_request", perf_counter() - start)
            self._rt_tel.error("get_request", type(exc).__name__)
            if AcceptBackoff.applies(exc):
                self._rt_accept_failed(exc)
            return _FAILED
        if self._rt_backoff.paused:
            self._rt_accepting_again()
        return request, client_address, wall, start, perf_counter()

    def _rt_accept_failed(self, exc: OSError) -> None:
        backoff = self._rt_backoff
        if backoff.failed(exc, monotonic()):  # once per episode, not per retry
            self.logger.warning(
                "accept failing; backing off",
                server=self.server_label,
                error=backoff.last_error,
                reason=exc.strerror or str(exc),
                hint="out of file descriptors: raise the limit (ulimit -n) or lower "
                "--max-children / --header-timeout; connections wait in the kernel's queue",
            )

    def _rt_accepting_again(self) -> None:
        ended = self._rt_backoff.succeeded()
        if ended is not None:
            self.logger.info(
                "accepting again",
                server=self.server_label,
                failures=ended[0],
                seconds=round(ended[1], 3),
            )

    def _rt_process(
        self, request: Any, client_address: Any, wall: int, start: float, now: float
    ) -> None:
        """The rest of the hook chain for a request ``get_request`` returned."""
        tel = self._rt_tel
        record = RequestRecord(request, client_address, start, wall)
        record.refs = [_LAST, _NOT_LAST]
        self._rt_records[id(request)] = record
        tel.request_started(record)
        self.timed_hook(record, "get_request", start, now)
        stream = self.socket_type == socket.SOCK_STREAM
        if stream and self.tcp_nodelay:
            self._rt_set_nodelay(request)
        try:
            if stream and self.proxy_protocol:  # the client's address comes with the request
                accepted = True  # verify_request runs on the worker (finish_request)
            else:
                try:
                    accepted = self.verify_request(request, client_address)  # type: ignore[attr-defined]
                finally:
                    start, now = now, perf_counter()
                    self.timed_hook(record, "verify_request", start, now)
            if not accepted:
                record.rejected = "verify_request"
                self.shutdown_request(request)
                return
            gate = self._rt_gate
            # (TLS: the head comes encrypted, after a handshake the worker does; that
            # handshake has the header time-out instead.)
            if gate is not None and stream and self.ssl_context is None:
                end = self._rt_head_end()
                if end is not None and gate.park(record, end):
                    return  # a worker once its request head is here (_rt_dispatch)
            if stream and self.connection_timeout is not None:
                request.settimeout(self.connection_timeout)
            self._rt_process_request(record, now)
        except Exception as exc:  # noqa: BLE001 - never stop the loop
            record.fail(record.hooks[-1][0], exc)
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: the caller's, as in stdlib
            record.fail(record.hooks[-1][0], exc)
            self.shutdown_request(request)
            raise
        finally:
            self.release_record(record)

    def _rt_process_request(self, record: RequestRecord, start: float) -> None:
        try:
            self.process_request(record.request, record.client_address)  # type: ignore[attr-defined]
        finally:
            self.timed_hook(record, "process_request", start, perf_counter())

    def _rt_dispatch(self, record: RequestRecord) -> None:
        """A waiting connection's request head arrived: on with the hook chain."""
        request = record.request
        # The loop holds the record again while it hands it over, as _rt_process does: a
        # child forked now must not inherit the last reference (it would finish the record,
        # access line and all, and the parent again when it reaps it).
        record.refs.append(_NOT_LAST)
        try:
            if self.connection_timeout is not None:
                request.settimeout(self.connection_timeout)
            self._rt_process_request(record, perf_counter())
        except Exception as exc:  # noqa: BLE001 - never stop the loop
            record.fail("process_request", exc)
            self.handle_error(request, record.client_address)
            self.shutdown_request(request)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: as in the standard library
            record.fail("process_request", exc)
            self.shutdown_request(request)
            raise
        finally:
            self.release_record(record)

    def _rt_unpark(self, record: RequestRecord, outcome: str) -> None:
        """A waiting connection ends without a worker (deadline, peer gone, drain)."""
        if outcome:
            record.ended = outcome
        self.shutdown_request(record.request)

    def _rt_head_end(self) -> bytes | None:
        factory = self.RequestHandlerClass
        try:
            return self._rt_heads[factory]
        except KeyError:
            end = self._rt_heads[factory] = request_head_end(factory)
            return end

    def _rt_set_nodelay(self, request: Any) -> None:
        if self.address_family in (socket.AF_INET, socket.AF_INET6):
            try:
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def _rt_service_actions(self) -> None:
        start = perf_counter()
        try:
            self.service_actions()  # type: ignore[attr-defined]
        except Exception as exc:
            # A failing service_actions must not stop the loop: count and log it.
            self._rt_tel.error("service_actions", type(exc).__name__)
            self.logger.error("service_actions failed", server=self.server_label, exc_info=True)
        finally:
            self.timed_hook(None, "service_actions", start, perf_counter())

    def _rt_turn(self, poll_interval: float) -> float | None:
        """Run the controller's tick; return how long the next select may wait."""
        controller = self._rt_controller
        if controller is None:
            return poll_interval
        wait = controller.tick()
        return poll_interval if wait is None else max(0.0, min(wait, poll_interval))

    def loop_heartbeat(self) -> None:
        if self._rt_controller is not None:
            self._rt_controller.heartbeat()

    def _rt_wakeup_fd(self) -> int:
        if self._rt_wakeup is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._rt_wakeup = (r, w)
        return self._rt_wakeup[0]

    @staticmethod
    def _rt_drain_wakeup(fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    # -- request hooks: each times itself ----------------------------------------

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler with the request's span current, timing each of its hooks.

        Called directly (not through the serving loop, e.g. by a test harness),
        it measures the request on its own: taken here, finished on return.
        """
        tel = self._rt_tel
        record = self._rt_records.get(id(request))
        direct = record is None
        if record is None:
            record = RequestRecord(request, client_address, perf_counter(), time_ns())
            record.refs = [_LAST]
            self._rt_records[id(request)] = record
            tel.request_started(record)
        record.thread = threading.get_ident()  # for the watchdog's stack
        record.owner = self  # for runtime.operation()
        token = tel.activate(record)
        current = current_request.set(record)
        start = perf_counter()
        try:
            stream = not direct and self.socket_type == socket.SOCK_STREAM
            if self.proxy_protocol and stream:
                proxied = self._rt_proxied(record, request)
                if proxied is None:  # refused: shutdown_request closes it
                    return
                client_address = proxied
            if self.ssl_context is not None and stream:
                secured = self._rt_handshake(record, request)
                if secured is None:  # failed: counted, logged; shutdown_request closes it
                    return
                request = secured
            self._rt_run_handler(request, client_address, record)
        except BaseException as exc:
            record.fail("finish_request", exc)
            if not isinstance(exc, Exception):
                self._rt_not_handled(record, exc)
            raise
        finally:
            end = perf_counter()
            self.timed_hook(record, "finish_request", start, end)
            current_request.reset(current)
            if token is not None:
                tel.deactivate(token)
            if direct:
                self.release_record(record, end)

    def _rt_proxied(self, record: RequestRecord, request: Any) -> Any:
        """The client's address from the connection's PROXY header, checked by
        ``verify_request``; None (the connection refused, counted) otherwise."""
        start = perf_counter()
        peer = record.client_address
        try:
            if peer not in self._rt_trusted:
                raise ProxyError(f"{format_address(peer)} is not in --proxy-allow-from")
            source = read_header(request, self.header_timeout or _PROXY_TIMEOUT)
        except (ProxyError, OSError) as exc:
            record.rejected = "proxy_protocol"
            self.logger.info(
                "PROXY header refused", server=self.server_label, client=format_address(peer),
                reason=str(exc) if isinstance(exc, ProxyError) else type(exc).__name__,
            )  # fmt: skip
            return None
        finally:
            with contextlib.suppress(OSError):
                request.settimeout(self.connection_timeout)
            start, now = perf_counter(), start
            self.timed_hook(record, "proxy_protocol", now, start)
        if source is not None:  # else the balancer's own connection (a health check)
            record.client_address = source
        try:
            accepted = self.verify_request(request, record.client_address)  # type: ignore[attr-defined]
        finally:
            self.timed_hook(record, "verify_request", start, perf_counter())
        if not accepted:
            record.rejected = "verify_request"
            return None
        return record.client_address

    def _rt_handshake(self, record: RequestRecord, request: Any) -> Any:
        """The TLS handshake, on this worker (never the accept loop), within the header
        time-out; the TLS socket, or None (the connection refused, counted, logged)."""
        assert self.ssl_context is not None
        start = perf_counter()
        tls = None
        try:
            tls = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
            record.request = tls  # the handler's, the drain's and the watchdog's socket now
            tls.settimeout(self.header_timeout or _PROXY_TIMEOUT)
            tls.do_handshake()
        except (OSError, ValueError) as exc:
            record.rejected = "tls_handshake"
            self.logger.info(
                "TLS handshake failed", server=self.server_label,
                client=format_address(record.client_address),
                reason=getattr(exc, "reason", None) or type(exc).__name__,
                error=str(exc)[:200],
            )  # fmt: skip
            return None
        finally:
            if tls is not None:
                with contextlib.suppress(OSError):
                    tls.settimeout(self.connection_timeout)
            self.timed_hook(record, "tls_handshake", start, perf_counter())
        cipher = tls.cipher()
        record.tls = (tls.version() or "", cipher[0] if cipher else "")
        return tls

    def _rt_not_handled(self, record: RequestRecord, exc: BaseException) -> None:
        """SystemExit, KeyboardInterrupt...: not handled (the standard library lets them
        end the serving loop, the worker thread or the child); said once here."""
        self.logger.warning(
            "request ended by an exception that is not handled",
            server=self.server_label,
            client=format_address(record.client_address),
            error_type=type(exc).__name__,
            hook=record.error_hook,
        )

    def shutdown_request(self, request: Any) -> None:
        record = self._rt_records.get(id(request))
        start = perf_counter()
        if record is not None:
            if record.request is not request:  # a TLS socket took the connection over
                request = record.request
            if record.error is not None and not record.ended:  # handle_error was overridden
                record.ended = early_end(record.error, request)
            if self._rt_access:
                record.io = request_bytes(request, self.address_family)
        try:
            super().shutdown_request(request)  # type: ignore[misc]
        finally:
            self.timed_hook(record, "shutdown_request", start, perf_counter())
            if record is not None:
                self.release_record(record)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log the failure as one structured line with its traceback (not stderr)."""
        record = self._rt_records.get(id(request))
        start = perf_counter()
        exc = sys.exc_info()[1]
        if record is not None:
            if not record.ended:
                record.ended = early_end(record.error or exc, request)
            ended = record.ended
        else:
            ended = early_end(exc, request)
        # The request's span is current, so the line carries its trace_id.
        token = self._rt_tel.activate(record) if record is not None else None
        current = current_request.set(record)
        try:
            if ended:
                if record is None or record.error_hook != "watchdog":  # it said so itself
                    self._rt_log_early_end(record, client_address, ended, exc)
            else:
                self._rt_log_error(record, client_address)
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop serving
            self._rt_tel.error("handle_error", type(exc).__name__)
        finally:
            current_request.reset(current)
            if token is not None:
                self._rt_tel.deactivate(token)
            self.timed_hook(record, "handle_error", start, perf_counter())

    def _rt_log_early_end(
        self,
        record: RequestRecord | None,
        client_address: Any,
        outcome: str,
        exc: BaseException | None,
    ) -> None:
        """A peer that left or a time limit: not the server's fault, so no traceback."""
        error = record.error if record is not None and record.error is not None else exc
        self.logger.info(
            "client closed the connection" if outcome == "client_closed" else "request timed out",
            server=self.server_label,
            client=format_address(client_address),
            outcome=outcome,
            hook=record.error_hook if record is not None else None,
            error_type=type(error).__name__ if error is not None else None,
            error=str(error) if error is not None else None,
        )

    def _rt_log_error(self, record: RequestRecord | None, client_address: Any) -> None:
        self.logger.error(
            "request failed",
            server=self.server_label,
            client=format_address(client_address),
            hook=record.error_hook if record is not None else None,
            exc_info=True,
        )

    def _rt_run_handler(
        self, request: Any, client_address: Any, record: RequestRecord | None
    ) -> None:
        """Instantiate the handler with its setup/handle/finish timed.

        The handler is an instance of the user's own class (``type(self) is
        Handler`` holds); the timed hooks are instance attributes that live
        only while its constructor runs.
        """
        factory = self.RequestHandlerClass
        try:
            plan = self._rt_handlers[factory]
        except KeyError:
            plan = self._rt_handlers[factory] = handler_plan(factory)
        if plan is None:
            factory(request, client_address, self)
            return
        cls, args, keywords = plan
        handler = cls.__new__(cls)
        if record is not None:
            record.handler = handler  # for the drain's close_idle()
        attrs = getattr(handler, "__dict__", None)
        if attrs is None:  # __slots__ without __dict__: run untimed
            try:
                handler.__init__(*args, request, client_address, self, **keywords)
            finally:
                if record is not None:
                    record.handler = None
            return
        for hook in HANDLER_HOOKS:
            attrs[hook] = functools.partial(timed_hook, self, record, hook, getattr(handler, hook))
        installed: tuple[str, ...] = ()
        conn: _http.HttpConnection | None = None
        if record is not None:
            if _http.is_http(handler):
                conn = _http.install(
                    self, handler, record, request, self._rt_access, self._rt_tel is not NULL
                )
                installed = conn.names
                record.http = True
            elif self._rt_closing_idle and hasattr(handler, "handle_drain"):
                # Taken after the drain told the others: tell this one before it starts.
                attrs["handle"] = functools.partial(_drain_first, handler, attrs["handle"])
        try:
            handler.__init__(*args, request, client_address, self, **keywords)
        except BaseException as exc:
            if conn is not None:  # a request in progress (wsgiref, a handler's own handle)
                conn.finish(exc)
            raise
        else:
            if conn is not None:
                conn.finish()
        finally:
            for hook in (*HANDLER_HOOKS, *installed):  # no cycle handler -> partial -> method
                attrs.pop(hook, None)
            if record is not None:
                record.handler = None

    # -- records ---------------------------------------------------------------

    def timed_hook(self, record: RequestRecord | None, name: str, start: float, end: float) -> None:
        if record is not None:
            record.hooks.append((name, start, end))
        self._rt_tel.hook(name, end - start, record)

    def release_record(self, record: RequestRecord, end: float | None = None) -> None:
        try:
            last = record.refs.pop()
        except IndexError:  # shutdown_request called again (e.g. by a handler): done already
            return
        if last == _LAST:
            self._rt_finish(record, perf_counter() if end is None else end)

    def _rt_finish(self, record: RequestRecord, end: float) -> None:
        tel = self._rt_tel
        self._rt_progress_at = monotonic()
        if self._rt_backoff.paused:  # an fd was freed: try accepting now
            self._rt_backoff.resume = True
            self.wake()
        if record.rejected:
            tel.rejected(record.rejected)
        # e.g. a handle_overload that raised: both are counted; a peer that left is not an error
        if record.error_type and record.ended != "client_closed":
            tel.error(record.error_hook, record.error_type)
        tel.request_finished(record, end)
        # An HTTP connection that carried requests said everything in their access lines.
        if self._rt_access and not (record.http and record.operations):
            try:
                self._rt_log_access(record, end)
            except Exception as exc:  # noqa: BLE001 - a log that fails must not stop serving
                tel.error("access_log", type(exc).__name__)
        # The exception's traceback holds the frames that hold the record: without this
        # the handler, its locals (and a worker thread) wait for the cycle collector.
        record.error = None
        record.handler = None
        record.owner = None
        with self._rt_idle:
            self._rt_records.pop(record.key, None)
            if not self._rt_records:
                self._rt_idle.notify_all()

    def operation_finished(self, op: Operation, end: float) -> None:
        """An HTTP request (or a marked operation) ended: its access line."""
        if not self._rt_access:
            return
        try:
            fields = _operation_fields(self.server_label, op, end)
            writer = self._rt_access_writer
            if writer is not None:
                writer(fields, op.span, "request" if op.kind == "http" else "operation")
            else:  # its span is current: the logger's processors add its trace_id
                self.logger.info("request" if op.kind == "http" else "operation", **fields)
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop serving
            self._rt_tel.error("access_log", type(exc).__name__)

    def _rt_log_access(self, record: RequestRecord, end: float) -> None:
        writer = self._rt_access_writer
        if writer is not None:  # our JSON logger: the same line, rendered directly
            writer(self._rt_access_fields(record, end), record.span, "request")
            return
        token = self._rt_tel.activate(record) if record.span is not None else None
        try:
            self.logger.info("request", **self._rt_access_fields(record, end))
        finally:
            if token is not None:
                self._rt_tel.deactivate(token)

    def _rt_access_fields(self, record: RequestRecord, end: float) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "server": self.server_label,
            "client": format_address(record.client_address),
            "outcome": record.outcome,
            "duration_s": round(end - record.perf, 6),
        }
        if record.io is not None:
            fields["bytes_in"] = record.io[0]
            if record.io[1] is not None:
                fields["bytes_out"] = record.io[1]
        if record.rejected:
            fields["reason"] = record.rejected
        elif record.error_type:
            fields["error_type"] = record.error_type
            fields["hook"] = record.error_hook
        if record.operations:
            fields["operations"] = record.operations
        if record.fields:
            for key, value in record.fields.items():
                fields.setdefault(key, value)
        return fields

    # -- graceful drain steps (driven by lifecycle.Runtime) ----------------------

    @property
    def draining(self) -> bool:
        """True once a drain began: handlers should finish what they do and close."""
        return self._rt_draining

    def begin_drain(self) -> None:
        """Readiness failed: from now on HTTP responses say ``Connection: close`` and
        keep-alive connections end after the response in progress."""
        self._rt_draining = True

    def close_idle(self) -> int:
        """End the connections that wait, idle, for their next request; return how many.

        Called when the listener has closed.  Connections waiting for their first
        request head that sent nothing yet get ``DRAIN_GRACE`` seconds to send it
        (their clients had just connected); ``http.server``
        connections idle between requests stop reading (what was sent is served,
        then the connection closes); other handlers' ``handle_drain()`` is
        called, if they have one.  Connections taken later are told as they start.
        """
        self._rt_draining = self._rt_closing_idle = True
        closed = 0
        if self._rt_gate is not None:
            closed += self._rt_gate.close_idle(DRAIN_GRACE)
        for record in list(self._rt_records.values()):
            handler = record.handler
            if handler is None:
                continue
            if _http.is_http(handler):
                if record.idle_since:
                    _http.stop_reading(record.request)
                    closed += 1
                continue
            drain = getattr(handler, "handle_drain", None)
            if drain is None:
                continue
            try:
                drain()
                closed += 1
            except Exception as exc:  # one handler must not stop the drain
                self._rt_tel.error("handle_drain", type(exc).__name__)
                self.logger.error("handle_drain failed", server=self.server_label, exc_info=True)
        return closed

    def reclaim_idle(self, wanted: int, idle_for: float = 1.0) -> int:
        """Free workers for connections that wait: end up to *wanted* keep-alive HTTP
        connections idle for at least *idle_for* seconds, oldest first (as nginx
        reuses idle keep-alive connections when it runs out).  At most every 0.1 s."""
        now = monotonic()
        if wanted <= 0 or now - self._rt_reclaimed_at < 0.1:
            return 0
        self._rt_reclaimed_at = now
        idle = sorted(
            (r for r in list(self._rt_records.values()) if 0.0 < r.idle_since <= now - idle_for),
            key=lambda r: r.idle_since,
        )
        for record in idle[:wanted]:
            _http.stop_reading(record.request)
        return min(wanted, len(idle))

    def stalled_for(self) -> float:
        """Seconds that work has waited while nothing completed (0.0: all is moving).

        Work waits when connections are queued for a worker (pools say when that
        began) while no request completes and no connection in flight moves a
        byte, for longer than the idle limit (``connection_timeout``: idle
        clients holding every worker are cut by then, which is no stall); or
        when ``accept()`` keeps failing (out of file descriptors).  ``/livez``
        fails once this passes ``liveness_timeout``.
        """
        now = monotonic()
        stalled = 0.0
        if self._rt_backoff.paused:
            stalled = now - self._rt_backoff.since  # nothing accepted since
        waiting = self._pool_waiting_since()
        if waiting is not None:
            waited = now - max(waiting, self._rt_progress_at) - (self.connection_timeout or 0.0)
            if waited > 0.0 and self._rt_bytes_moved(now):
                waited = 0.0  # long requests, but moving: a full pool, not a stuck one
            stalled = max(stalled, waited)
        return max(0.0, stalled)

    def _rt_bytes_moved(self, now: float) -> bool:
        """Whether any connection in flight sent or received bytes since the last look.

        The kernel's counts (TCP_INFO), read at most once a second and only while
        work waits: a slow download is progress, a handler stuck on a lock is not.
        """
        if now - self._rt_bytes_seen_at < 1.0:
            return False
        self._rt_bytes_seen_at = now
        moved = False
        for record in list(self._rt_records.values()):
            io = request_bytes(record.request, self.address_family)
            if io is None:
                continue
            total = io[0] + (io[1] or 0)
            if total != record.io_seen:
                record.io_seen = total
                moved = True
        if moved:
            self._rt_progress_at = now
        return moved

    def _pool_waiting_since(self) -> float | None:
        """monotonic() since when requests wait for a worker (pools override)."""
        return None

    def forked_child(self, telemetry: ServerTelemetry) -> None:
        """In a forked request child: report through *telemetry* (the child's stand-in,
        which passes its timings to the parent) and let go of what belongs to the
        serving loop."""
        self._rt_tel = telemetry
        if self._rt_gate is not None:
            self._rt_gate.release_in_child()
            self._rt_gate = None

    def accept_backlog(self) -> int:
        """Take what the kernel already queued, without blocking; return the count.

        Only what is queued when it starts (a TCP listener tells; else at most
        ``request_queue_size``), plus at most ``request_queue_size`` more that
        arrive while it is taken (datagrams: at most 65536): peers that keep
        sending while the socket is still open cannot keep a drain going.
        A stream listener is closed right after its queue is taken, before the
        connections are processed (processing may wait for a worker), so that
        no new connection completes its handshake only to be reset.
        """
        if self.socket_type == socket.SOCK_STREAM:
            return self._rt_take_queue_and_close()
        taken = failures = 0
        queued = _MAX_DATAGRAMS_DRAINED
        self.socket.setblocking(False)
        try:
            # Stop when the queue is empty, or when accepting keeps failing
            # (e.g. EMFILE): a drain must end.
            while failures < _MAX_ACCEPT_FAILURES and taken < queued:
                result = self._rt_accept_one()
                if result == _EMPTY:
                    break
                if result == _TAKEN:
                    taken += 1
                    failures = 0
                else:
                    failures += 1
        finally:
            self.socket.setblocking(True)
        return taken

    def _rt_take_queue_and_close(self) -> int:
        # What is queued now, and what completes its handshake while we take it (until
        # the queue is empty): each one left when the listener closes is reset.
        grabbed: list[tuple[Any, Any, int, float, float]] = []
        try:
            for sock in self.listeners():
                size = self.request_queue_size
                queued = len(grabbed) + accept_queue_length(sock, size) + size
                failures = 0
                sock.setblocking(False)
                self._rt_from = None if sock is self.socket else sock
                while failures < _MAX_ACCEPT_FAILURES and len(grabbed) < queued:
                    taken = self._rt_take()
                    if taken == _EMPTY:
                        break
                    if isinstance(taken, tuple):
                        grabbed.append(taken)
                        failures = 0
                    else:
                        failures += 1
        finally:
            self._rt_from = None
            self.close_listener()
        for item in grabbed:
            self._rt_process(*item)
        return len(grabbed)

    def close_listener(self) -> None:
        """Stop accepting: close the listening socket (new connections are refused)."""
        if self._rt_listening:
            self._rt_listening = False
            self.socket.close()
            for sock in self._rt_more:
                sock.close()

    def wait_for_idle(self, deadline: float, heartbeat: Callable[[], None] | None = None) -> bool:
        """Wait until no request is in flight or ``perf_counter()`` passes *deadline*.

        Connections still waiting for their request head are looked after
        meanwhile (the serving loop that did it has stopped).
        """
        gate = self._rt_gate
        while gate is not None and len(gate):
            remaining = deadline - perf_counter()
            if remaining <= 0:
                return False
            gate.service(min(remaining, 0.05))
            if heartbeat is not None:
                heartbeat()
        with self._rt_idle:
            while self._rt_records:
                remaining = deadline - perf_counter()
                if remaining <= 0:
                    return False
                self._rt_idle.wait(min(remaining, 1.0))
                if heartbeat is not None:
                    heartbeat()
        return True

    def force_close(self) -> int:
        """Cut the connections still in flight so their handlers' I/O fails; return the count."""
        self._rt_forced = True  # server_close() will not wait long for what is stuck
        forced = 0
        if self._rt_gate is not None:
            forced += self._rt_gate.close_all("timed_out")
        for record in list(self._rt_records.values()):
            request = record.request
            if isinstance(request, socket.socket):
                try:
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            forced += 1
        return forced

    def server_close(self) -> None:
        self._rt_listening = False
        if self._rt_gate is not None:
            self._rt_gate.close()
            self._rt_gate = None
        super().server_close()  # type: ignore[misc]
        for sock in self._rt_more:
            sock.close()
        if self._rt_wakeup is not None:
            for fd in self._rt_wakeup:
                os.close(fd)
            self._rt_wakeup = None


_plain_dgram: dict[type, bool] = {}


if TYPE_CHECKING:  # the mix-in is the interface (mypy checks it here)
    _IMPLEMENTS: type[ServedServer] = InstrumentedMixIn


def _watch_listeners(
    selector: selectors.BaseSelector, server: Any, more: list[_Socket], on: bool
) -> None:
    """Watch (or stop watching) the server's listener and the added ones, marked ``_MORE``."""
    for fileobj, mark in ((server, None), *((sock, _MORE) for sock in more)):
        if on:
            selector.register(fileobj, selectors.EVENT_READ, mark)
        else:
            selector.unregister(fileobj)


def _operation_fields(label: str | None, op: Operation, end: float) -> dict[str, Any]:
    """An HTTP request's (or an operation's) access line."""
    record = op.record
    fields: dict[str, Any] = {"server": label, "client": format_address(record.client_address)}
    if op.kind == "http":
        fields["method"] = op.method
        fields["path"] = op.path
        if op.route:
            fields["route"] = op.route
        fields["status"] = op.status or None
        fields["bytes_out"] = op.bytes_out
        fields["duration_s"] = round(end - op.start, 6)
        agent = op.user_agent
        if agent:
            fields["user_agent"] = agent
    else:
        fields["operation"] = op.kind
        fields["duration_s"] = round(end - op.start, 6)
    outcome = op.outcome
    if outcome != "ok" or op.kind != "http":
        fields["outcome"] = outcome
    if op.error_type:
        fields["error_type"] = op.error_type
    if op.attributes:
        for key, value in op.attributes.items():
            fields.setdefault(key, value)
    if record.fields:
        for key, value in record.fields.items():
            fields.setdefault(key, value)
    return fields


def _plain_datagram_get_request(cls: type) -> bool:
    """Whether *cls* takes datagrams with ``UDPServer.get_request`` (not an override)."""
    try:
        return _plain_dgram[cls]
    except KeyError:
        mro = cls.__mro__
        after = mro[mro.index(InstrumentedMixIn) + 1 :]
        owner = next((k for k in after if "get_request" in k.__dict__), None)
        plain = _plain_dgram[cls] = owner is socketserver.UDPServer
        return plain


def _drain_first(handler: Any, handle: Callable[[], Any]) -> Any:
    handler.handle_drain()
    return handle()


def _sooner(timeout: float | None, wait: float) -> float:
    wait = max(0.0, wait)
    return wait if timeout is None else min(timeout, wait)


def _constructor_signature(cls: type) -> inspect.Signature:
    """The signature of the standard constructor *cls* extends, plus our keyword-only extras.

    ``InstrumentedMixIn.__init__`` passes ``*args, **kwargs`` through, which
    would hide ``server_address, RequestHandlerClass, bind_and_activate`` from
    ``help()`` and ``inspect.signature``.
    """
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is InstrumentedMixIn:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # without self
        if issubclass(klass, InstrumentedMixIn):
            return inspect.Signature(params)  # a subclass with its own constructor
        break
    else:  # pragma: no cover - every server has BaseServer.__init__
        params = []
    extras = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, p in inspect.signature(InstrumentedMixIn.__init__).parameters.items()
        if name in ("telemetry", "logger", "server_name")
    ]
    variadic = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    fixed = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature(fixed + extras + variadic)
