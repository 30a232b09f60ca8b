"""Lifecycle: STARTING -> SERVING -> DRAINING -> STOPPED, signals, and the drain.

Everything that decides the server's state lives here.  Signal handlers only
record the signal and wake the serving loop through its pipe; the loop acts
on it in :meth:`Runtime.tick`, so nothing deadlocks when ``serve_forever``
runs on the main thread.

The graceful sequence, on the first SIGTERM or SIGINT:

1. readiness fails at once (state DRAINING); HTTP responses from now on say
   ``Connection: close`` and keep-alive connections end after them;
2. keep serving for ``drain_delay`` seconds (load balancers notice);
3. stop accepting: take what the kernel already queued, close the listener;
   connections idle between requests are closed at once (other protocols'
   handlers hear it through ``handle_drain()``);
4. wait up to ``graceful_timeout`` for requests in flight;
5. force the rest (cut thread-mode connections, SIGKILL forked children);
6. flush telemetry within ``flush_timeout``; exit status 0 if nothing was
   forced, else 1.

A second SIGTERM/SIGINT, or SIGQUIT, skips the waiting and stops now.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from .telemetry.api import NULL, ServerTelemetry
from .watchdog import Watchdog

if TYPE_CHECKING:
    import structlog.typing

__all__ = ["Lifecycle", "Runtime", "State", "capture_signals", "InvalidTransition"]


class State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


#: The state machine as data: which state may follow which.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.SERVING, State.STOPPED}),
    State.SERVING: frozenset({State.DRAINING, State.STOPPED}),
    State.DRAINING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}

GRACEFUL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
IMMEDIATE_SIGNALS = (signal.SIGQUIT,)
DUMP_SIGNALS = (signal.SIGUSR1,)


class InvalidTransition(RuntimeError):
    """A state change the lifecycle does not allow."""


class Lifecycle:
    """The server's state, its heartbeat, and who hears about changes.

    ``live()`` is true while the serving loop makes progress (its heartbeat is
    younger than ``liveness_timeout``) and, when connections wait for a worker,
    requests keep completing (``stall_check()``, seconds of waiting without a
    completed request, stays below ``liveness_timeout``), whatever the load and
    also while draining; ``ready()`` is true only while SERVING.
    """

    def __init__(
        self,
        *,
        liveness_timeout: float = 30.0,
        on_change: Callable[[State, State, float], None] | None = None,
    ) -> None:
        self.state = State.STARTING
        self.liveness_timeout = liveness_timeout
        self._on_change = on_change
        self._since = monotonic()
        self.heartbeat_at = self._since
        self.stop_requested = False  # set by a signal handler: readiness fails at once
        #: More that must hold for readiness (the pre-fork pool: enough workers up).
        self.ready_check: Callable[[], bool] | None = None
        #: Seconds that work has waited while nothing completed (a stuck pool).
        self.stall_check: Callable[[], float] | None = None
        self._lock = threading.Lock()

    def to(self, new: State) -> None:
        with self._lock:
            old = self.state
            if new is old:
                return
            if new not in TRANSITIONS[old]:
                raise InvalidTransition(f"{old.value} -> {new.value}")
            now = monotonic()
            spent, self._since, self.state = now - self._since, now, new
        if self._on_change is not None:
            self._on_change(old, new, spent)

    def heartbeat(self) -> None:
        self.heartbeat_at = monotonic()

    def heartbeat_age(self) -> float:
        return monotonic() - self.heartbeat_at

    def stalled_for(self) -> float:
        return self.stall_check() if self.stall_check is not None else 0.0

    def live(self) -> bool:
        return (
            self.state is not State.STOPPED
            and self.heartbeat_age() < self.liveness_timeout
            and self.stalled_for() < self.liveness_timeout
        )

    def ready(self) -> bool:
        if self.state is not State.SERVING or self.stop_requested:
            return False
        return self.ready_check is None or self.ready_check()


@contextlib.contextmanager
def capture_signals(
    handler: Callable[[int], None], signals: tuple[int, ...] = GRACEFUL_SIGNALS + IMMEDIATE_SIGNALS
) -> Iterator[None]:
    """Route *signals* to *handler* while the block runs; restore the old handlers after.

    Only works on the main thread (a Python rule); elsewhere it does nothing,
    and the caller stops the runtime with :meth:`Runtime.stop` instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, lambda s, _f: handler(s))
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Runtime:
    """Run one server with probes, signals and a graceful drain.

    Methods for the caller:

    - ``run() -> int``: serve until stopped; returns the exit status
    - ``stop(immediate=False)``: ask it to stop, from any thread or a signal handler
    """

    #: The signals it handles while running (a pre-fork worker leaves SIGINT to its supervisor).
    signals: tuple[int, ...] = GRACEFUL_SIGNALS + IMMEDIATE_SIGNALS + DUMP_SIGNALS
    #: Take the kernel's accept queue before closing the listener (a pre-fork
    #: worker leaving a pool that goes on serving leaves it to the others).
    take_backlog = True

    def __init__(
        self,
        server: Any,
        *,
        drain_delay: float = 5.0,
        graceful_timeout: float = 30.0,
        poll_interval: float = 0.5,
        liveness_timeout: float = 30.0,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        flush_timeout: float = 5.0,
        handle_signals: bool = True,
        request_warn_after: float | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.server = server
        self.drain_delay = drain_delay
        self.graceful_timeout = graceful_timeout
        self.poll_interval = poll_interval
        self.flush_timeout = flush_timeout
        self.handle_signals = handle_signals
        self._tel: ServerTelemetry = getattr(server, "_rt_tel", NULL)
        self.logger = logger if logger is not None else server.logger
        self.lifecycle = Lifecycle(liveness_timeout=liveness_timeout, on_change=self._changed)
        self.lifecycle.stall_check = getattr(server, "stalled_for", None)
        self._signals: deque[int] = deque()
        self._drain_until: float | None = None
        self._immediate = False
        self.forced = 0
        self.watchdog = Watchdog(
            server,
            warn_after=request_warn_after,
            timeout=request_timeout,
            lifecycle=self.lifecycle,
            logger=self.logger,
        )

    # -- called from anywhere ----------------------------------------------------

    def stop(self, immediate: bool = False) -> None:
        """Begin the graceful drain (or, if *immediate* or already draining, stop now)."""
        self._on_signal(signal.SIGQUIT if immediate else signal.SIGTERM)

    def _on_signal(self, signum: int) -> None:
        # Record only (readiness reads the flag at once, even while the loop is
        # busy in a long handler); the loop acts in tick().
        if signum in DUMP_SIGNALS:
            self.watchdog.request_dump()  # logged on the watchdog's thread
            return
        self.lifecycle.stop_requested = True
        self._signals.append(signum)
        self.server.wake()

    # -- called by the serving loop ------------------------------------------------

    def tick(self) -> float | None:
        self.lifecycle.heartbeat()
        while self._signals:
            self._act(self._signals.popleft())
        if self._drain_until is None:
            return None
        remaining = self._drain_until - monotonic()
        if remaining <= 0:
            self.server._rt_shutdown_request = True
            return 0.0
        return remaining

    def heartbeat(self) -> None:
        self.lifecycle.heartbeat()

    def _act(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in IMMEDIATE_SIGNALS or self._drain_until is not None:
            self.logger.warning("stopping now", signal=name, server=self.server.server_label)
            self._immediate = True
            self._drain_until = monotonic()
            self.server._rt_shutdown_request = True
            if self.lifecycle.state is State.SERVING:
                self.lifecycle.to(State.DRAINING)
            return
        self.logger.info(
            "drain started",
            signal=name,
            server=self.server.server_label,
            drain_delay=self.drain_delay,
            graceful_timeout=self.graceful_timeout,
        )
        self._drain_until = monotonic() + self.drain_delay
        self.lifecycle.to(State.DRAINING)
        begin = getattr(self.server, "begin_drain", None)
        if begin is not None:
            begin()

    def _changed(self, old: State, new: State, spent: float) -> None:
        self._tel.state_changed(new.value)
        self.logger.info(
            "lifecycle",
            server=self.server.server_label,
            state=new.value,
            previous=old.value,
            previous_seconds=round(spent, 6),
            pid=os.getpid(),
        )

    # -- the three steps -----------------------------------------------------------

    def run(self) -> int:
        """Startup, serve, shutdown. Returns 0 if nothing was forced, else 1."""
        self.server.set_controller(self)
        capture = capture_signals(self._on_signal, self.signals)
        self.watchdog.start()
        try:
            with capture if self.handle_signals else contextlib.nullcontext():
                self.lifecycle.to(State.SERVING)
                try:
                    self.server.serve_forever(self.poll_interval)
                finally:
                    self._shutdown()
        finally:
            self.watchdog.stop()
        return 1 if self.forced else 0

    def _shutdown(self) -> None:
        server, log = self.server, self.logger
        if self.lifecycle.state is State.SERVING:
            self.lifecycle.to(State.DRAINING)
        phase = perf_counter()
        taken = server.accept_backlog() if self.take_backlog and not self._immediate else 0
        server.close_listener()
        close_idle = getattr(server, "close_idle", None)
        idle_closed = close_idle() if close_idle is not None else 0
        log.info(
            "listener closed",
            server=server.server_label,
            backlog_taken=taken,
            idle_closed=idle_closed,
            seconds=round(perf_counter() - phase, 6),
        )
        phase = perf_counter()
        deadline = phase + (0.0 if self._immediate else self.graceful_timeout)
        idle = server.wait_for_idle(deadline, self.lifecycle.heartbeat)
        log.info(
            "in-flight wait over",
            server=server.server_label,
            idle=idle,
            seconds=round(perf_counter() - phase, 6),
        )
        if not idle:
            self.forced = server.force_close()
            log.warning("forced requests", server=server.server_label, forced=self.forced)
            # Give cut handlers a moment to unwind so their records finish.
            server.wait_for_idle(perf_counter() + 1.0, self.lifecycle.heartbeat)
        server.set_controller(None)
        server.server_close()
        phase = perf_counter()
        dropped = self._tel.flush(self.flush_timeout)  # bounded, whatever the exporter does
        log.info(
            "telemetry flushed",
            server=server.server_label,
            seconds=round(perf_counter() - phase, 6),
            spans_dropped=dropped,
        )
        self.lifecycle.to(State.STOPPED)
