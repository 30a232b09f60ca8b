"""Lifecycle: STARTING -> SERVING -> DRAINING -> STOPPED, signals, and the drain.

One engine, :class:`Runtime`, decides the state of whatever it runs: a
:class:`Unit`, which is one server (:class:`ServerUnit`) or a pre-fork pool
of worker processes (``prefork.Prefork``): the same signals, wake-up, drain
clock, drain steps and state transitions, with a different set of things to
drain.  Signal handlers only record the signal and wake the unit's loop; the
loop acts on it in :meth:`Runtime.tick`, so nothing deadlocks when the loop
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

A second SIGTERM/SIGINT, or SIGQUIT, skips the waiting and stops now (also
during step 4).  A pre-fork pool does the same with its workers: step 3 closes
its copy of the listener and sends each worker SIGTERM (a worker runs steps 3
to 6 itself), step 5 kills the workers still alive.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .watchdog import Watchdog

if TYPE_CHECKING:
    import structlog.typing

    from ._served import ServedServer

__all__ = [
    "InvalidTransition", "Lifecycle", "Runtime", "ServerUnit", "State", "Unit", "capture_signals",
]  # fmt: skip


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
#: The signals that stop (the others a unit may act on: reload, scaling, dumps).
STOP_SIGNALS = frozenset(GRACEFUL_SIGNALS + IMMEDIATE_SIGNALS)


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


class SignalsWhileStarting:
    """Stop signals that arrive while the service starts, kept for the engine.

    From the moment the listener is bound the kernel queues connections, so a
    SIGTERM then must drain them, not kill the process (its default action)
    and reset them.  ``with SignalsWhileStarting() as early:`` around the
    start-up (settings, bind, :meth:`Runtime.run`) records them; the engine,
    given ``early.received``, acts on them once its own handlers are in place:
    it serves what is queued and exits as it would for a signal received
    while serving.  Only works on the main thread; elsewhere it does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = GRACEFUL_SIGNALS + IMMEDIATE_SIGNALS) -> None:
        self.received: list[int] = []
        self._capture = capture_signals(self.received.append, signals)

    def __enter__(self) -> SignalsWhileStarting:
        self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._capture.__exit__(None, None, None)


@runtime_checkable
class Unit(Protocol):
    """What the engine runs and drains: one server, or a pre-fork pool of workers.

    The engine calls these in order: ``attach`` (once), ``start``, then ``serve``
    (which calls :meth:`Runtime.tick` every turn and returns after
    ``end_serving``), and for the drain ``begin_drain`` (readiness failed),
    ``stop_accepting``, ``wait_for_idle`` (in slices), ``force_close`` if
    something is left, ``release``, ``flush``; ``close`` always, last.
    """

    #: The bound server (its ``server_label`` names the unit in log lines).
    server: ServedServer
    #: The signals the engine catches while the unit runs.
    signals: tuple[int, ...]

    def attach(self, engine: Runtime) -> None: ...
    def log_fields(self) -> dict[str, Any]: ...
    def start(self) -> None: ...
    def serve(self) -> None: ...
    def end_serving(self) -> None: ...
    def wake(self) -> None: ...
    def signal_now(self, signum: int) -> bool: ...
    def on_signal(self, signum: int) -> None: ...
    def begin_drain(self) -> None: ...
    def stop_now(self) -> None: ...
    def stop_accepting(self, take_backlog: bool) -> dict[str, Any]: ...
    def drain_margin(self, immediate: bool) -> float: ...
    def wait_for_idle(self, deadline: float, heartbeat: Callable[[], None]) -> bool: ...
    def force_close(self) -> int: ...
    def release(self) -> None: ...
    def flush(self, timeout: float) -> int | None: ...
    def close(self) -> None: ...
    def ready(self) -> bool: ...
    def stalled_for(self) -> float: ...
    def state_changed(self, state: str) -> None: ...
    def exit_status(self, forced: int) -> int: ...
    def runtime_status(self) -> dict[str, Any]: ...


def run_reload(reload: Callable[[], None], logger: Any, fields: dict[str, Any]) -> bool:
    """Run a SIGHUP *reload*; a failure keeps what was loaded before (logged, not fatal)."""
    try:
        reload()
    except Exception as exc:  # noqa: BLE001 - a bad new file must not stop serving
        if logger is not None:
            logger.warning(
                "reload failed; keeping the previous certificate",
                error=str(getattr(exc, "message", exc)), **fields,
            )  # fmt: skip
        return False
    if logger is not None:
        logger.info("TLS certificate reloaded", **fields)
    return True


class ServerUnit:
    """One instrumented server as the engine's unit: its serving loop, its drain
    steps (the core's :class:`~runtime._served.ServedServer` interface) and the
    watchdog of its requests."""

    signals: tuple[int, ...] = GRACEFUL_SIGNALS + IMMEDIATE_SIGNALS + DUMP_SIGNALS

    def __init__(
        self,
        server: ServedServer,
        *,
        poll_interval: float = 0.5,
        request_warn_after: float | None = None,
        request_timeout: float | None = None,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self.server = server
        self.poll_interval = poll_interval
        #: SIGHUP's action, if any (the TLS certificate loaded again); without one, SIGHUP
        #: keeps its default.
        self.reload = reload
        if reload is not None:
            self.signals = (*self.signals, signal.SIGHUP)
        self.request_warn_after = request_warn_after
        self.request_timeout = request_timeout
        self.engine: Runtime | None = None
        self.watchdog: Watchdog | None = None

    def attach(self, engine: Runtime) -> None:
        self.engine = engine
        self.watchdog = Watchdog(
            self.server,
            warn_after=self.request_warn_after,
            timeout=self.request_timeout,
            lifecycle=engine.lifecycle,
            logger=engine.logger,
        )

    def log_fields(self) -> dict[str, Any]:
        return {"server": self.server.server_label}

    def start(self) -> None:
        self.server.set_controller(self.engine)
        if self.watchdog is not None:
            self.watchdog.start()

    def serve(self) -> None:
        self.server.serve_forever(self.poll_interval)

    def end_serving(self) -> None:
        self.server.shutdown()  # from the serving thread: asks the loop to stop, returns

    def wake(self) -> None:
        self.server.wake()

    def signal_now(self, signum: int) -> bool:
        if signum in DUMP_SIGNALS and self.watchdog is not None:
            self.watchdog.request_dump()  # logged on the watchdog's thread: a stuck loop too
            return True
        return False

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.reload is not None:
            run_reload(self.reload, self.engine.logger if self.engine else None, self.log_fields())

    def begin_drain(self) -> None:
        self.server.begin_drain()

    def stop_now(self) -> None:
        pass  # the engine ends serving; what is in flight is forced after no wait

    def stop_accepting(self, take_backlog: bool) -> dict[str, Any]:
        server = self.server
        taken = server.accept_backlog() if take_backlog else 0
        server.close_listener()
        return {"backlog_taken": taken, "idle_closed": server.close_idle()}

    def drain_margin(self, immediate: bool) -> float:
        return 0.0

    def wait_for_idle(self, deadline: float, heartbeat: Callable[[], None]) -> bool:
        return bool(self.server.wait_for_idle(deadline, heartbeat))

    def force_close(self) -> int:
        return int(self.server.force_close())

    def release(self) -> None:
        self.server.set_controller(None)
        self.server.server_close()

    def flush(self, timeout: float) -> int | None:
        return int(self.server.server_telemetry.flush(timeout))

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()

    def ready(self) -> bool:
        return True

    def stalled_for(self) -> float:
        return float(self.server.stalled_for())

    def state_changed(self, state: str) -> None:
        self.server.server_telemetry.state_changed(state)

    def exit_status(self, forced: int) -> int:
        return 1 if forced else 0

    def runtime_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.server.runtime_status()
        return status


class Runtime:
    """The engine: run one :class:`Unit` with probes, signals and a graceful drain.

    *target* is a unit, or a server (run as a :class:`ServerUnit` with
    *poll_interval*, *request_warn_after* and *request_timeout*).

    Methods for the caller:

    - ``run() -> int``: serve until stopped; returns the exit status
    - ``stop(immediate=False)``: ask it to stop, from any thread or a signal handler
    - ``handle_signal(signum)``: what its signal handler does (record and wake)
    """

    #: The signals it handles while running (None: the unit's).
    signals: tuple[int, ...] | None = None
    #: Take the kernel's accept queue before closing the listener (a pre-fork
    #: worker leaving a pool that goes on serving leaves it to the others).
    take_backlog = True

    def __init__(
        self,
        target: Any,
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
        if isinstance(target, Unit):
            unit: Unit = target
        else:
            unit = ServerUnit(
                target,
                poll_interval=poll_interval,
                request_warn_after=request_warn_after,
                request_timeout=request_timeout,
            )
        self.unit = unit
        self.server = unit.server
        self.drain_delay = drain_delay
        self.graceful_timeout = graceful_timeout
        self.poll_interval = poll_interval
        self.flush_timeout = flush_timeout
        self.handle_signals = handle_signals
        self.logger = logger if logger is not None else self.server.logger
        self.lifecycle = Lifecycle(liveness_timeout=liveness_timeout, on_change=self._changed)
        self.lifecycle.stall_check = unit.stalled_for
        self.lifecycle.ready_check = unit.ready
        self._signals: deque[int] = deque()
        self._drain_until: float | None = None
        #: True once told to stop now (SIGQUIT, a second signal): no waiting.
        self.immediate = False
        self.forced = 0
        unit.attach(self)

    # -- called from anywhere ----------------------------------------------------

    def stop(self, immediate: bool = False) -> None:
        """Begin the graceful drain (or, if *immediate* or already draining, stop now)."""
        self.handle_signal(signal.SIGQUIT if immediate else signal.SIGTERM)

    def handle_signal(self, signum: int) -> None:
        """Record *signum* and wake the loop (all a signal handler may do); the loop acts."""
        if self.unit.signal_now(signum):
            return
        if signum in STOP_SIGNALS:
            self.lifecycle.stop_requested = True  # readiness fails at once, even mid-request
        self._signals.append(signum)
        self.unit.wake()

    @property
    def stopping(self) -> bool:
        """True once a drain (or a stop now) began."""
        return self._drain_until is not None

    # -- called by the unit's loop -------------------------------------------------

    def tick(self) -> float | None:
        """Act on the signals; the seconds of serving left (None: not draining)."""
        self.lifecycle.heartbeat()
        self._act_on_signals()
        if self._drain_until is None:
            return None
        remaining = self._drain_until - monotonic()
        if remaining <= 0:
            self.unit.end_serving()
            return 0.0
        return remaining

    def heartbeat(self) -> None:
        self.lifecycle.heartbeat()

    def _act_on_signals(self) -> None:
        while self._signals:
            self._act(self._signals.popleft())

    def _act(self, signum: int) -> None:
        if signum not in STOP_SIGNALS:
            if self._drain_until is None:  # no reloads or scaling while stopping
                self.unit.on_signal(signum)
            return
        name = signal.Signals(signum).name
        if signum in IMMEDIATE_SIGNALS or self._drain_until is not None:
            self.logger.warning("stopping now", signal=name, **self.unit.log_fields())
            self.immediate = True
            self._drain_until = monotonic()
            if self.lifecycle.state is State.SERVING:
                self.lifecycle.to(State.DRAINING)
            self.unit.stop_now()
            self.unit.end_serving()
            return
        self.logger.info(
            "drain started",
            signal=name,
            **self.unit.log_fields(),
            drain_delay=self.drain_delay,
            graceful_timeout=self.graceful_timeout,
        )
        self._drain_until = monotonic() + self.drain_delay
        self.lifecycle.to(State.DRAINING)
        self.unit.begin_drain()

    def _changed(self, old: State, new: State, spent: float) -> None:
        self.unit.state_changed(new.value)
        self.logger.info(
            "lifecycle",
            **self.unit.log_fields(),
            state=new.value,
            previous=old.value,
            previous_seconds=round(spent, 6),
            pid=os.getpid(),
        )

    # -- the three steps -----------------------------------------------------------

    def run(
        self, on_serving: Callable[[], None] | None = None, *, received: Sequence[int] = ()
    ) -> int:
        """Startup, serve, shutdown. Returns the unit's exit status (0: nothing forced).

        *on_serving* runs once serving, with the signal handlers in place: what it
        announces (the command's "serving ... on" line) is safe to answer with a signal.
        *received*: signals that arrived while the service started (a
        :class:`SignalsWhileStarting`'s), acted on once the handlers are in place.
        """
        unit = self.unit
        signals = self.signals if self.signals is not None else unit.signals
        capture = capture_signals(self.handle_signal, signals)
        try:
            unit.start()
            with capture if self.handle_signals else contextlib.nullcontext():
                for signum in list(received):  # complete: the early handlers are replaced
                    self.handle_signal(signum)
                self.lifecycle.to(State.SERVING)
                if on_serving is not None:
                    on_serving()
                try:
                    unit.serve()
                finally:
                    self._shutdown()
        finally:
            unit.close()
            if self.lifecycle.state is not State.STOPPED:  # (start() failed)
                if self.lifecycle.state is State.SERVING:
                    self.lifecycle.to(State.DRAINING)
                self.lifecycle.to(State.STOPPED)
        return unit.exit_status(self.forced)

    def _shutdown(self) -> None:
        unit, log = self.unit, self.logger
        fields = unit.log_fields()
        if self.lifecycle.state is State.SERVING:
            self.lifecycle.to(State.DRAINING)
        phase = perf_counter()
        steps = unit.stop_accepting(self.take_backlog and not self.immediate)
        log.info("listener closed", **fields, **steps, seconds=round(perf_counter() - phase, 6))
        phase = perf_counter()
        idle = self._wait_for_idle(phase)
        log.info(
            "in-flight wait over", **fields, idle=idle, seconds=round(perf_counter() - phase, 6)
        )
        if not idle:
            self.forced = unit.force_close()
            log.warning("forced requests", **fields, forced=self.forced)
            # Give cut handlers a moment to unwind so their records finish.
            unit.wait_for_idle(perf_counter() + 1.0, self.lifecycle.heartbeat)
        unit.release()
        phase = perf_counter()
        dropped = unit.flush(self.flush_timeout)  # bounded, whatever the exporter does
        if dropped is not None:
            log.info(
                "telemetry flushed",
                **fields,
                seconds=round(perf_counter() - phase, 6),
                spans_dropped=dropped,
            )
        self.lifecycle.to(State.STOPPED)

    def _wait_for_idle(self, start: float) -> bool:
        """Step 4, in slices: a second signal (or SIGQUIT) meanwhile stops the wait now."""
        unit = self.unit
        wait = 0.0 if self.immediate else self.graceful_timeout
        deadline = start + wait + unit.drain_margin(self.immediate)
        while True:
            now = perf_counter()
            if unit.wait_for_idle(
                min(deadline, now + self.poll_interval), self.lifecycle.heartbeat
            ):
                return True
            if perf_counter() >= deadline:
                return False
            was_immediate = self.immediate
            self._act_on_signals()
            if self.immediate and not was_immediate:  # stop now: no more waiting
                deadline = perf_counter() + unit.drain_margin(True)
