"""What runs in a pre-fork worker, and the table it shares with its supervisor.

A worker is forked by :class:`runtime.prefork.Prefork` and started from a
frozen :class:`WorkerSpec` (what to run: the server, the settings it needs, the
shared table, the metrics folder) plus the descriptors of the supervisor's it
must let go; it never sees the supervisor itself.  It detaches from the
supervisor's signals, pipes and sockets, imports the handler again (SIGHUP
reloads code), switches prometheus-client to per-slot multiprocess files,
reports ``ready`` on its pipe and runs the core's :class:`Runtime` on the
shared listener, beating its heartbeat into the :class:`Slots` table.  All it
says to the supervisor goes through that pipe and that table.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import mmap
import os
import random
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from ._record import RequestRecord
from .lifecycle import Runtime
from .telemetry.api import NULL, ServerTelemetry
from .telemetry.pool import use_worker_files

__all__ = ["EXIT_BOOT_FAILED", "EXIT_RECYCLED", "Slots", "WorkerProcess", "WorkerSpec"]

#: A worker's exit status after recycling itself (max_requests).
EXIT_RECYCLED = 3
#: A worker's exit status when it could not boot (handler import, telemetry...).
EXIT_BOOT_FAILED = 4


class Slots:
    """Shared memory table, one row per worker slot: heartbeat and pool state.

    Written by the worker, read by the supervisor, no lock.  Each field is one
    aligned 8-byte word stored and loaded whole through a typed memoryview (one
    machine store), never with ``struct.pack_into``: that zeroes the field before
    writing it, so a supervisor reading at that instant saw a heartbeat of 0.0,
    a worker silent since boot, and aborted a healthy one.  A read of several
    fields may mix two updates; that costs one scrape a stale number.
    """

    FIELDS = ("heartbeat", "pid", "in_flight", "busy", "idle", "max", "queue", "handled")
    _WIDTH = len(FIELDS)  # 8-byte words per row
    _IN_FLIGHT, _HANDLED = FIELDS.index("in_flight"), FIELDS.index("handled")
    _POOL = ("in_flight", "workers_busy", "workers_idle", "workers_max", "queue_depth")

    def __init__(self, count: int) -> None:
        self.count = count
        # MAP_SHARED, page-aligned: seen after fork, every word aligned.  One more
        # word after the rows: the pool's flags (see ``draining``).
        self._map = mmap.mmap(-1, (max(1, count) * self._WIDTH + 1) * 8)
        self._floats = memoryview(self._map).cast("d")
        self._ints = memoryview(self._map).cast("q")
        self._flags = max(1, count) * self._WIDTH

    @property
    def draining(self) -> bool:
        """The pool drains: workers answer HTTP with ``Connection: close`` from now on."""
        return bool(self._ints[self._flags])

    @draining.setter
    def draining(self, value: bool) -> None:
        self._ints[self._flags] = int(value)

    def reset(self, slot: int, pid: int) -> None:
        base = slot * self._WIDTH
        for i in range(1, self._WIDTH):
            self._ints[base + i] = 0
        self._ints[base + 1] = pid
        self._floats[base] = monotonic()

    def beat(self, slot: int) -> None:
        self._floats[slot * self._WIDTH] = monotonic()

    def set_pool(self, slot: int, stats: dict[str, float]) -> None:
        base = slot * self._WIDTH + self._IN_FLIGHT
        for i, key in enumerate(self._POOL):
            self._ints[base + i] = int(stats.get(key, 0))

    def set_requests(self, slot: int, in_flight: int, handled: int) -> None:
        base = slot * self._WIDTH
        self._ints[base + self._IN_FLIGHT] = in_flight
        self._ints[base + self._HANDLED] = handled

    def read(self, slot: int) -> dict[str, float]:
        base = slot * self._WIDTH
        row: dict[str, float] = {"heartbeat": self._floats[base]}
        for i in range(1, self._WIDTH):
            row[self.FIELDS[i]] = self._ints[base + i]
        return row


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What a pre-fork worker runs: everything it needs, nothing of its supervisor's.

    ``server``: the bound server (sync, or with a thread pool), listening on the
    shared socket; ``reload()`` returns the handler class freshly imported;
    ``make_telemetry(slot)`` the worker's telemetry; ``release``: objects whose
    ``close()`` a worker calls first (the admin port's descriptors).
    """

    server: Any
    logger: Any
    slots: Slots
    metrics_dir: str
    stacks_dir: str
    graceful_timeout: float
    poll_interval: float
    flush_timeout: float
    worker_timeout: float
    request_warn_after: float | None = None
    request_timeout: float | None = None
    max_requests: int = 0
    max_requests_jitter: int = 0
    reuse_port: bool = False
    reload: Callable[[], Any] | None = None
    make_telemetry: Callable[[int], Any] | None = None
    release: tuple[Any, ...] = ()


class WorkerProcess:
    """What runs in a forked worker: boot, report ready, serve, exit.

    *inherited*: the supervisor's own descriptors the fork copied (its wake-up
    pipe, its selector, the other workers' pipes), closed at once.  *signal_mask*:
    the mask to restore once the worker's own handlers are in place (the
    supervisor forks with its signals blocked, so a signal sent to the new
    worker in between waits for them instead of running the supervisor's).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        slot: int,
        generation: int,
        report_fd: int,
        inherited: tuple[int, ...] = (),
        signal_mask: set[int] | None = None,
    ) -> None:
        self.spec = spec
        self.signal_mask = signal_mask
        self.slot = slot
        self.generation = generation
        self.report_fd = report_fd
        self.inherited = inherited
        self.handled = 0
        self.early_signals: list[int] = []
        self.supervisor = os.getppid()
        limit = spec.max_requests
        if limit > 0 and spec.max_requests_jitter > 0:
            limit += random.randint(0, spec.max_requests_jitter)
        self.limit = limit
        self.runtime: _WorkerRuntime | None = None

    def send(self, event: str, **fields: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(self.report_fd, (json.dumps({"event": event, **fields}) + "\n").encode())

    def run(self) -> int:
        spec, server = self.spec, self.spec.server
        logger = spec.logger.bind(worker=self.slot)
        try:
            self._detach()
            if spec.reload is not None:  # the handler's code as it is on disk now
                server.RequestHandlerClass = spec.reload()
            telemetry = spec.make_telemetry(self.slot) if spec.make_telemetry else None
            server.logger = logger
            server.use_telemetry(_SlotTelemetry(telemetry, self))
            if spec.reuse_port:
                _listen_own(server)
            # Every worker wakes for each connection (or datagram); the ones that
            # lose the race must find nothing, not block in accept() (or recvfrom).
            server.socket.setblocking(False)
            server.accept_when_busy = False  # (a worker with threads) see pools.ThreadingMixIn
            rt = _WorkerRuntime(
                server, drain_delay=0.0, graceful_timeout=spec.graceful_timeout,
                poll_interval=spec.poll_interval, logger=logger,
                request_warn_after=spec.request_warn_after, request_timeout=spec.request_timeout,
                flush_timeout=spec.flush_timeout,
            )  # fmt: skip
            rt.slots, rt.slot, rt.supervisor = spec.slots, self.slot, self.supervisor
            rt.own_queue = spec.reuse_port
            rt.stall_limit = spec.worker_timeout / 2  # then its heartbeat ages worker_timeout
            # (stalled_for() already waits out the idle limit, connection_timeout)
            self.runtime = rt
        except Exception as exc:
            logger.exception("worker failed to boot")
            self.send("boot_error", error=f"{type(exc).__name__}: {exc}")
            return EXIT_BOOT_FAILED
        for signum in self.early_signals:  # asked to leave while booting
            rt.handle_signal(signum)
        self.send("ready")
        code = rt.run()
        return EXIT_RECYCLED if code == 0 and rt.recycled else code

    def _detach(self) -> None:
        """Leave the supervisor's signals, pipes and sockets to the supervisor."""
        spec = self.spec
        for signum in (signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)  # the supervisor's to act on
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):  # acted on once it runs
            signal.signal(signum, lambda s, _f: self._early_signal(s))
        if self.signal_mask is not None:  # what arrived since the fork is delivered now
            signal.pthread_sigmask(signal.SIG_SETMASK, self.signal_mask)
        for fd in self.inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        for held in spec.release:
            held.close()
        stack = open(os.path.join(spec.stacks_dir, f"w{self.slot}.txt"), "w")  # noqa: SIM115
        faulthandler.enable(file=stack, all_threads=True)  # SIGABRT: dump the stacks, then die
        spec.slots.reset(self.slot, os.getpid())
        use_worker_files(spec.metrics_dir, self.slot)

    def _early_signal(self, signum: int) -> None:
        if self.runtime is not None:
            self.runtime.handle_signal(signum)  # booted, its own handlers not yet installed
        else:
            self.early_signals.append(signum)

    # -- called per request by _SlotTelemetry --------------------------------------------

    def finished(self, in_flight: int) -> None:
        self.handled += 1
        self.spec.slots.set_requests(self.slot, in_flight, self.handled)
        rt = self.runtime
        if self.limit and self.handled >= self.limit and rt is not None and not rt.recycled:
            rt.recycled = True
            self.send("retiring", handled=self.handled)
            if not rt.own_queue:
                rt.retire()  # the shared queue waits for the others meanwhile
            # With its own (SO_REUSEPORT) listener, keep serving: the supervisor starts a
            # replacement and, once it is ready, sends SIGHUP.  Closing first would leave
            # the pool a listener short and refuse every connection hashed to it.


class _WorkerRuntime(Runtime):
    """The core's runtime in a worker: heartbeats to the slot table; SIGINT is the supervisor's.

    SIGTERM: the pool stops, take a share of the accept queue, finish, exit.
    SIGHUP: this worker leaves a pool that goes on (reload, scale down, recycling):
    finish what it has, and leave the queue to the others.
    """

    signals = (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP)
    slots: Slots
    slot: int
    recycled = False
    orphaned = False

    own_queue = False  # SO_REUSEPORT: the queue is this worker's alone; take it

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.take_backlog = self.own_queue
            signum = signal.SIGTERM
        super().handle_signal(signum)

    def retire(self) -> None:
        self.handle_signal(signal.SIGHUP)

    supervisor = 0

    #: Seconds of stall (connections waiting, nothing completing or moving) after which
    #: the worker stops beating, so the supervisor aborts (stacks logged) and replaces it.
    stall_limit = 0.0

    def _beat(self) -> None:
        if not self.stall_limit or self.server.stalled_for() < self.stall_limit:
            self.slots.beat(self.slot)

    def tick(self) -> float | None:
        self._beat()
        self.slots.set_pool(self.slot, self.server.runtime_stats())
        if self.slots.draining and not self.server.draining:
            # The supervisor's drain began: keep serving, but end keep-alive
            # connections after their responses (its drain_delay is running).
            self.server.begin_drain()
        if os.getppid() != self.supervisor and not self.orphaned:
            # The supervisor died (SIGKILL, OOM): nobody would stop or replace us.
            self.orphaned = True
            self.logger.error("supervisor gone; stopping now", supervisor=self.supervisor)
            self.stop(immediate=True)
        return super().tick()

    def heartbeat(self) -> None:
        self._beat()
        super().heartbeat()


class _SlotTelemetry:
    """A worker's telemetry factory: the real one, plus the slot table's request counts."""

    def __init__(self, inner: Any, worker: WorkerProcess) -> None:
        self.inner = inner
        self.worker = worker

    def bind(self, server: Any) -> ServerTelemetry:
        bound: ServerTelemetry = self.inner.bind(server) if self.inner is not None else NULL
        return _SlotBound(bound, server, self.worker)  # type: ignore[return-value]


class _SlotBound:
    """Delegates every call to the bound telemetry; counts requests into the slot table."""

    def __init__(self, bound: ServerTelemetry, server: Any, worker: WorkerProcess) -> None:
        for name in (
            "activate", "deactivate", "hook", "rejected", "error", "queue_wait", "child_reaped",
            "request_slow", "request_timed_out", "datagram_truncated", "state_changed", "flush",
            "child_begin", "child_end", "child_merge", "operation_started",
            "operation_finished", "operation_observed",
        ):  # fmt: skip
            setattr(self, name, getattr(bound, name))
        self._started = bound.request_started
        self._finished = bound.request_finished
        self._in_flight = server.in_flight_count
        self._worker = worker
        self._slots = worker.spec.slots
        self._slot = worker.slot

    def request_started(self, record: RequestRecord) -> None:
        self._started(record)
        self._slots.set_requests(self._slot, self._in_flight(), self._worker.handled)

    def request_finished(self, record: RequestRecord, end: float) -> None:
        self._finished(record, end)
        self._worker.finished(max(0, self._in_flight() - 1))


def _listen_own(server: Any) -> None:
    """Replace the inherited socket by this worker's own SO_REUSEPORT listener."""
    shared = server.socket
    own = socket.socket(shared.family, shared.type)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    own.bind(server.server_address)
    if own.type == socket.SOCK_STREAM:
        own.listen(server.request_queue_size)
    shared.close()
    server.socket = own
