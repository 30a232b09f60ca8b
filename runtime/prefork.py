"""Pre-fork worker pool: long-lived worker processes, supervised.

The supervisor (this process) binds the server's socket, forks ``workers``
processes that each run the instrumented serve loop on that shared socket
(synchronously, or with a bounded thread pool of ``threads``), and then only
supervises: it serves the admin port, reads the workers' pipes and
heartbeats, and acts on signals.

- A worker that crashes is replaced; failures while booting back off
  exponentially (0.1 s to 10 s), and after ``boot_failure_limit`` failures in
  a row with no worker serving the supervisor gives up with status 3.
- A worker whose heartbeat is older than ``worker_timeout`` gets SIGABRT
  (faulthandler writes every thread's stack to a file the supervisor logs;
  SIGKILL follows if it still lives a second later), and is replaced.
- ``max_requests`` (+ up to ``max_requests_jitter``) recycles a worker: it
  says so, its replacement starts at once, it drains and exits.  With
  ``reuse_port`` it serves on until the replacement is ready, then leaves
  with its own queue (so the pool is never a listener short, and recycling
  never refuses or resets a connection).
- ``reuse_port``: each worker listens on its own SO_REUSEPORT socket (the
  kernel spreads connections, no thundering herd, but a busy worker's queue
  waits for it and a leaving worker must serve its own queue first).
- SIGTTIN / SIGTTOU add / remove a worker (never above ``max_workers``).
- Each worker imports the handler's modules itself (the supervisor only
  checks they import), so SIGHUP reloads code: it starts a new generation and
  stops an old worker for each new one that is ready; if the new ones cannot
  boot, the old ones keep serving.
- SIGTERM / SIGINT: readiness fails at once, workers keep serving for
  ``drain_delay``, then the supervisor closes its copy of the listener and
  sends SIGTERM to every worker, which takes its share of the kernel's
  backlog, finishes its requests (``graceful_timeout``) and exits; stragglers
  are killed.  Exit 0, or 1 if anything was forced.  SIGQUIT or a second
  signal: stop now.

Metrics: workers write prometheus-client's multiprocess files, one set per
worker *slot* (not per pid), in a directory made fresh at start and removed
at exit: a replacement continues its slot's counters, so storage is bounded
by ``max_workers`` however many workers have lived, and totals never go
down.  A shared memory table carries each slot's heartbeat, requests in
flight and pool state; the supervisor turns it into the core's gauges.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import Any

import structlog

from ._prefork_worker import EXIT_BOOT_FAILED, EXIT_RECYCLED, Slots, WorkerProcess, WorkerSpec
from .lifecycle import Runtime, run_reload
from .telemetry.pool import PoolMetrics, PoolSnapshot

__all__ = ["EXIT_BOOT_FAILED", "EXIT_GAVE_UP", "EXIT_RECYCLED", "Prefork", "WorkerDirError"]

#: The supervisor's exit status when workers keep failing to boot.
EXIT_GAVE_UP = 3

_SUPERVISOR_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD,
)  # fmt: skip
_DIR_PREFIX = "socketserver-runtime-prefork-"
#: In the folder: locked (flock, exclusive) by the supervisor and its workers while any lives.
_LOCK_NAME = "lock"
_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 10.0
#: Why workers exit (the ``cause`` label of ``worker_exits_total``).
EXIT_CAUSES = (
    "shutdown", "reload", "scale_down", "max_requests", "exit", "crash", "timeout", "boot_failure",
)  # fmt: skip
#: A worker that dies sooner than this after its start counts as a crash loop (back-off).
_MIN_UPTIME = 1.0
#: Between SIGABRT (stack dump) and SIGKILL of a hung worker.
_ABORT_GRACE = 1.0
#: A stopped worker's time past its graceful_timeout (forcing, flushing) before SIGKILL.
_STOP_GRACE = 5.0
#: A worker told to stop now (SIGQUIT) has this long before SIGKILL.
_QUIT_GRACE = 2.0


@dataclass(eq=False)
class _Worker:
    slot: int
    pid: int
    generation: int
    fd: int  # read end of the worker's pipe (-1 once it hit end-of-file)
    started: float
    state: str = "booting"  # booting, ready, retiring (recycling itself), stopping
    stop_cause: str = ""  # why the supervisor stopped it
    kill_at: float | None = None  # SIGKILL if still alive then
    killed: bool = False
    aborted: bool = False  # timed out: SIGABRT sent
    boot_error: str = ""
    buffer: bytes = b""


@dataclass
class _Counts:
    starts: int = 0
    restarts: int = 0
    exits: dict[str, int] = field(default_factory=dict)


class Prefork:
    """Supervise ``workers`` processes serving *server*'s socket: the engine's
    (:class:`~runtime.lifecycle.Runtime`'s) unit for the pre-fork mode.

    *server* is an instrumented server, bound and listening, built in this
    process (sync, or with a thread pool for ``threads`` per worker).
    *make_telemetry(slot)* builds a worker's telemetry after the fork (its
    own tracer provider, so its own ``service.instance.id``); *reload()*
    returns a freshly imported handler class for workers started after a
    SIGHUP.  Metrics of every worker are served by :meth:`render_metrics`.
    *graceful_timeout* is each worker's (the engine waits that long, plus
    the workers' own margin to force and flush, before it kills them).
    """

    signals: tuple[int, ...] = _SUPERVISOR_SIGNALS
    #: Run on SIGHUP before the new generation forks (the TLS certificate loaded again).
    on_reload: Callable[[], None] | None = None

    def __init__(
        self,
        server: Any,
        *,
        workers: int,
        max_workers: int | None = None,
        min_workers: int = 1,
        worker_timeout: float = 30.0,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        boot_failure_limit: int = 5,
        reuse_port: bool = False,
        graceful_timeout: float = 30.0,
        poll_interval: float = 0.5,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        make_telemetry: Callable[[int], Any] | None = None,
        reload: Callable[[], Any] | None = None,
        request_warn_after: float | None = None,
        request_timeout: float | None = None,
        prefix: str = "socketserver_",
        flush_timeout: float = 5.0,
        worker_tmp_dir: str | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.server = server
        self.target = workers
        self.max_workers = max_workers if max_workers is not None else 2 * workers
        if self.max_workers < workers:
            raise ValueError(f"max_workers ({self.max_workers}) is below workers ({workers})")
        self.min_workers = min(min_workers, workers)
        self.worker_timeout = worker_timeout
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.boot_failure_limit = boot_failure_limit
        self.reuse_port = reuse_port
        self.graceful_timeout = graceful_timeout
        self.poll_interval = poll_interval
        self.logger = logger if logger is not None else server.logger
        self.make_telemetry = make_telemetry
        self.reload = reload
        self.request_warn_after = request_warn_after
        self.request_timeout = request_timeout
        self.prefix = prefix
        self.flush_timeout = flush_timeout
        #: Sockets the workers must not keep (the admin port's, say).
        self.close_in_workers: list[Any] = []
        self.engine: Runtime | None = None
        self.generation = 0
        self.counts = _Counts()
        self.forced = 0
        self._workers: list[_Worker] = []
        self._dir, self._lock_fd = _make_dir(worker_tmp_dir)
        self.metrics_dir = os.path.join(self._dir, "metrics")
        self._stacks_dir = os.path.join(self._dir, "stacks")
        self.slots = Slots(self.max_workers)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._boot_failures = 0
        self._backoff = 0.0
        self._next_spawn = 0.0
        self._serving = True
        self._listener_closed = False
        self._gave_up = ""
        self.metrics = PoolMetrics(
            self.metrics_dir, prefix, snapshot=self._snapshot, pids=self.worker_pids,
            exit_causes=EXIT_CAUSES,
        )  # fmt: skip
        self._capped: tuple[float | None, float] | None = None
        self._cap_connection_timeout()

    def _cap_connection_timeout(self) -> None:
        """Sync workers: an idle connection must not outlast the worker timeout.

        A sync worker waiting for a client's next bytes does not beat its
        heartbeat; with an idle timeout above ``worker_timeout`` one idle client
        would get a healthy worker aborted as hung.  So it is at most half.
        """
        from .pools import ThreadingMixIn

        server = self.server
        if self.worker_timeout <= 0 or isinstance(server, ThreadingMixIn):
            return
        if getattr(server, "socket_type", None) != socket.SOCK_STREAM:
            return
        limit = self.worker_timeout / 2
        current = getattr(server, "connection_timeout", None)
        if current is None or current > limit:
            server.connection_timeout = limit
            self._capped = (current, limit)

    # -- what the admin port reads --------------------------------------------------

    def worker_spec(self) -> WorkerSpec:
        """What a worker started now runs (``close_in_workers`` may have grown since start)."""
        return WorkerSpec(
            server=self.server, logger=self.logger, slots=self.slots,
            metrics_dir=self.metrics_dir, stacks_dir=self._stacks_dir,
            graceful_timeout=self.graceful_timeout, poll_interval=self.poll_interval,
            flush_timeout=self.flush_timeout, worker_timeout=self.worker_timeout,
            request_warn_after=self.request_warn_after, request_timeout=self.request_timeout,
            max_requests=self.max_requests, max_requests_jitter=self.max_requests_jitter,
            reuse_port=self.reuse_port, reload=self.reload, make_telemetry=self.make_telemetry,
            release=tuple(self.close_in_workers),
        )  # fmt: skip

    def _own_fds(self) -> tuple[int, ...]:
        """The supervisor's descriptors a worker must not keep: selector, wake-up, pipes."""
        pipes = (w.fd for w in self._workers if w.fd >= 0)
        return (self._selector.fileno(), self._wake_r, self._wake_w, *pipes)

    def count_dropped_log_lines(self, count: int) -> None:
        """The supervisor's log sink dropped *count* lines (its ``on_drop``)."""
        self.metrics.count_dropped("log_lines", count)

    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w.state == "ready")

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def workers(self) -> list[dict[str, Any]]:
        """One row per live worker, for the state dump and the status page."""
        now = monotonic()
        rows = []
        for w in list(self._workers):
            slot = self.slots.read(w.slot)
            rows.append({
                "worker": w.slot, "pid": w.pid, "generation": w.generation, "state": w.state,
                "uptime_seconds": round(now - w.started, 3),
                "heartbeat_age_seconds": round(now - slot["heartbeat"], 3),
                "in_flight": int(slot["in_flight"]), "handled": int(slot["handled"]),
            })  # fmt: skip
        return rows

    def pool_stats(self) -> dict[str, float]:
        """The core's pool gauges summed over the live workers' slots (as runtime_stats())."""
        rows = [self.slots.read(w.slot) for w in list(self._workers)]
        for row in rows:
            if row["max"] == 0:  # a sync worker: itself is the one worker
                row["max"], row["busy"] = 1, min(1, row["in_flight"])
                row["idle"] = 1 - row["busy"]
        return {
            key: float(sum(r[field] for r in rows))
            for key, field in (("in_flight", "in_flight"), ("workers_busy", "busy"),
                             ("workers_idle", "idle"), ("workers_max", "max"),
                             ("queue_depth", "queue"))
        }  # fmt: skip

    def runtime_status(self) -> dict[str, Any]:
        """The status page's server row: the pool as one server."""
        from ._net import format_address

        stats = self.pool_stats()
        return {
            "name": str(self.server.server_label),
            "transport": self.server.transport,
            "address": format_address(self.server.server_address),
            "mode": "prefork",
            **{key: int(value) for key, value in stats.items()},
        }

    #: The status page reads the workers' counters from the registry (no recent requests).
    telemetry = None

    @property
    def families(self) -> Callable[[], Iterable[Any]]:
        return self.metrics.collect

    @property
    def worker_rows(self) -> Callable[[], list[dict[str, Any]]]:
        return self.workers

    def keep_from_workers(self, descriptors: Any) -> None:
        """*descriptors* (``close()``-able) are the supervisor's: workers close their copies."""
        self.close_in_workers.append(descriptors)

    def render_metrics(self, accept: str = "") -> tuple[bytes, str]:
        return self.metrics.render(accept)

    def _snapshot(self) -> PoolSnapshot:
        """What the pool's own metric families show now."""
        now = monotonic()
        workers = [
            (w.slot, w.state, now - self.slots.read(w.slot)["heartbeat"])
            for w in list(self._workers)
        ]
        return PoolSnapshot(
            label=str(self.server.server_label), transport=self.server.transport,
            state=self.state, stats=self.pool_stats(), workers=workers,
            starts=self.counts.starts, restarts=self.counts.restarts,
            exits=dict(self.counts.exits),
        )  # fmt: skip

    # -- the engine's unit ------------------------------------------------------------

    def attach(self, engine: Runtime) -> None:
        self.engine = engine

    @property
    def state(self) -> str:
        """The engine's lifecycle state (``starting`` before one runs the pool)."""
        return self.engine.lifecycle.state.value if self.engine is not None else "starting"

    def log_fields(self) -> dict[str, Any]:
        return {
            "server": self.server.server_label,
            "mode": "prefork",
            "workers": len(self._workers),
        }

    @property
    def _stopping(self) -> bool:
        return self.engine is not None and self.engine.stopping

    def start(self) -> None:
        self.logger.info(
            "prefork", workers=self.target, max_workers=self.max_workers,
            min_workers=self.min_workers, metrics_dir=self.metrics_dir, pid=os.getpid(),
        )  # fmt: skip
        if self.reuse_port and not _migrates_requests():
            self.logger.info(
                "reuse-port: a worker that dies (SIGKILL, crash) resets the connections in its "
                "own accept queue; net.ipv4.tcp_migrate_req=1 (Linux 5.14+) has the kernel move "
                "them to another worker", tcp_migrate_req=0,
            )  # fmt: skip
        if self._capped is not None:
            self.logger.info(
                "connection timeout lowered: a sync worker waiting on an idle connection "
                "does not heartbeat", connection_timeout=self._capped[1],
                requested=self._capped[0], worker_timeout=self.worker_timeout,
            )  # fmt: skip

    def serve(self) -> None:
        """The supervisor's loop while the pool serves: signals, workers, their pipes."""
        assert self.engine is not None
        # The first workers start before any signal is acted on: a stop signal received
        # while the runtime started drains the pool, whose workers take what is queued.
        self._maintain(monotonic())
        while True:
            wait = self.engine.tick()
            if not self._serving:
                return
            now = monotonic()
            self._reap(now)
            self._check_workers(now)
            if not self._stopping:
                self._maintain(now)
                if self._gave_up:
                    return  # the engine drains the workers that serve
            self._select(self._timeout(now, wait))

    def end_serving(self) -> None:
        self._serving = False

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"s")
        except BlockingIOError:
            pass  # the loop is awake already

    def signal_now(self, signum: int) -> bool:
        if signum == signal.SIGCHLD:  # only wakes the loop: a worker exited, reap it
            self.wake()
            return True
        return False

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self.on_reload is not None:  # the new generation forks with what it loads
                run_reload(self.on_reload, self.logger, {"server": self.server.server_label})
            self.generation += 1
            self._boot_failures = 0
            self.logger.info("reload", signal=name, generation=self.generation)
        elif signum == signal.SIGTTIN:
            if self.target < self.max_workers:
                self.target += 1
            self.logger.info("workers", signal=name, target=self.target)
        elif signum == signal.SIGTTOU:
            self.target = max(1, self.target - 1)
            self.logger.info("workers", signal=name, target=self.target)
        elif signum == signal.SIGUSR1:
            self.logger.info(
                "state", state=self.state, target=self.target,
                generation=self.generation, workers=self.workers(),
            )  # fmt: skip

    def begin_drain(self) -> None:
        self.slots.draining = True  # workers: Connection: close from now on

    def stop_now(self) -> None:
        self._close_listener()
        kill_at = monotonic() + _QUIT_GRACE
        for w in self._workers:
            self._signal_worker(w, signal.SIGQUIT, w.stop_cause or "shutdown", kill_at)

    def stop_accepting(self, take_backlog: bool) -> dict[str, Any]:
        """Close the supervisor's listener; SIGTERM to every worker (each takes its share
        of the queue, finishes and flushes)."""
        now = monotonic()
        self._close_listener()
        told = 0
        for w in self._workers:
            if w.state != "stopping":
                self._stop_worker(w, "shutdown", now)
                told += 1
        return {"workers_stopped": told}

    def drain_margin(self, immediate: bool) -> float:
        """Past the engine's wait: a worker forces and flushes in its own time, then SIGKILL."""
        return (_QUIT_GRACE if immediate else _STOP_GRACE) + _ABORT_GRACE

    def wait_for_idle(self, deadline: float, heartbeat: Callable[[], None]) -> bool:
        """Until every worker exited (True) or *deadline* (``perf_counter()``) passed."""
        while True:
            now = monotonic()
            self._reap(now)
            self._check_workers(now)  # (kills the workers past their kill_at)
            if not self._workers:
                return True
            left = deadline - perf_counter()
            if left <= 0:
                return False
            heartbeat()
            self._select(min(left, self.poll_interval))

    def force_close(self) -> int:
        """SIGKILL the workers still alive; they count as forced."""
        alive = [w for w in self._workers if not w.killed]
        for w in alive:
            self._kill(w)
        return len(alive)

    def release(self) -> None:
        self._close_listener()

    def flush(self, timeout: float) -> int | None:
        return None  # the supervisor exports nothing itself: its workers flushed theirs

    def close(self) -> None:
        self._kill_all()
        self._close_listener()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        shutil.rmtree(self._dir, ignore_errors=True)
        os.close(self._lock_fd)  # (after the removal: the folder is nobody's only then)

    def ready(self) -> bool:
        return self.ready_workers() >= self.min_workers

    def stalled_for(self) -> float:
        return 0.0  # each worker's stall stops its heartbeat: the supervisor replaces it

    def state_changed(self, state: str) -> None:
        pass

    def exit_status(self, forced: int) -> int:
        """0, 1 (something was forced) or 3 (workers cannot boot)."""
        if self._gave_up:
            return EXIT_GAVE_UP
        return 1 if forced or self.forced else 0

    def _select(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                self._read(key.data)

    def _timeout(self, now: float, drain_left: float | None) -> float:
        timeout = self.poll_interval
        if drain_left is not None:
            timeout = min(timeout, drain_left)
        if self._next_spawn > now:
            timeout = min(timeout, self._next_spawn - now)
        return max(0.0, timeout)

    # -- workers: start, watch, stop -----------------------------------------------------------

    def _maintain(self, now: float) -> None:
        serving = [w for w in self._workers if w.state in ("booting", "ready")]
        current = [w for w in serving if w.generation == self.generation]
        old = [w for w in serving if w.generation != self.generation]
        while len(current) > self.target:  # SIGTTOU
            self._stop_worker(current.pop(), "scale_down", now)
        # Reload: one old worker stops for each new one ready.
        ready_new = sum(1 for w in current if w.state == "ready")
        for w in old[: max(0, ready_new + len(old) - self.target)]:
            self._stop_worker(w, "reload", now)
            old.remove(w)
        # Recycling a reuse_port worker (max_requests): it serves on until its replacement
        # is ready, or leaves at once if there is no room to start that one first.  (With
        # the shared listener a retiring worker leaves by itself at once.)
        room = self.max_workers - len(self._workers)
        ready = sum(1 for w in current if w.state == "ready")
        for w in self._workers:
            if self.reuse_port and w.state == "retiring" and (ready >= self.target or room <= 0):
                self._stop_worker(w, "max_requests", now)
        missing = self.target - len(current)
        if missing <= 0 or now < self._next_spawn:
            return
        if room <= 0 and old and not any(w.state == "booting" for w in current):
            self._stop_worker(old[0], "reload", now)  # no room to start first: make some
        for _ in range(min(missing, room)):
            self._spawn(now)

    def _spawn(self, now: float) -> None:
        used = {w.slot for w in self._workers}
        slot = min(set(range(self.max_workers)) - used)
        read_fd, write_fd = os.pipe()
        self.slots.reset(slot, 0)
        # Until the worker has its own handlers a signal sent to it would run ours there
        # (and be lost: a pool stopping at that instant would wait for that worker until it
        # is killed); blocked, it waits for them.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                code = 70
                try:
                    os.close(read_fd)
                    code = WorkerProcess(
                        self.worker_spec(),
                        slot,
                        self.generation,
                        write_fd,
                        self._own_fds(),
                        signal_mask=mask,
                    ).run()
                finally:
                    _drain_logs(1.0)  # os._exit skips the exit-time write of pending log lines
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = _Worker(slot, pid, self.generation, read_fd, now)
        self._workers.append(worker)
        self._selector.register(read_fd, selectors.EVENT_READ, worker)
        self.counts.starts += 1
        self.logger.info("worker started", worker=slot, pid=pid, generation=self.generation)

    def _read(self, w: _Worker) -> None:
        if w.fd < 0:
            return  # reaped since the select
        try:
            data = os.read(w.fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the worker exited (or closed its pipe): reap it
            self._selector.unregister(w.fd)
            os.close(w.fd)
            w.fd = -1
            self._reap(monotonic())
            return
        w.buffer += data
        *lines, w.buffer = w.buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            event = message.get("event")
            if event == "ready" and w.state == "booting":
                w.state = "ready"
                self._boot_failures = 0
                self._backoff = 0.0
                self.logger.info("worker ready", worker=w.slot, pid=w.pid)
            elif event == "boot_error":
                w.boot_error = str(message.get("error", ""))
            elif event == "retiring" and w.state in ("booting", "ready"):
                w.state = "retiring"  # its replacement starts now
                self.logger.info(
                    "worker recycling", worker=w.slot, pid=w.pid, handled=message.get("handled")
                )

    def _check_workers(self, now: float) -> None:
        for w in self._workers:
            if w.kill_at is not None and now >= w.kill_at and not w.killed:
                self._kill(w)
                continue
            if w.aborted or w.state == "stopping" or self.worker_timeout <= 0:
                continue
            age = now - self.slots.read(w.slot)["heartbeat"]
            if age > self.worker_timeout:
                self.logger.error(
                    "worker timed out", worker=w.slot, pid=w.pid, state=w.state,
                    heartbeat_age_seconds=round(age, 3), worker_timeout=self.worker_timeout,
                )  # fmt: skip
                w.aborted = True
                w.kill_at = now + _ABORT_GRACE
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGABRT)  # faulthandler: every thread's stack

    def _kill(self, w: _Worker) -> None:
        w.killed = True
        if not w.aborted:
            self.forced += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)

    def _stop_worker(self, w: _Worker, cause: str, now: float) -> None:
        # SIGHUP: leave a pool that goes on (the accept queue is the others');
        # SIGTERM: the pool stops, take a share of the queue.
        signum = signal.SIGTERM if cause == "shutdown" else signal.SIGHUP
        self._signal_worker(w, signum, cause, now + self.graceful_timeout + _STOP_GRACE)

    def _signal_worker(self, w: _Worker, signum: int, cause: str, kill_at: float) -> None:
        w.state = "stopping"
        w.stop_cause = cause
        w.kill_at = kill_at if w.kill_at is None else min(w.kill_at, kill_at)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signum)

    def _close_listener(self) -> None:
        if not self._listener_closed:
            self._listener_closed = True
            self.server.server_close()

    def _kill_all(self) -> None:
        for w in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)
            if w.fd >= 0:
                os.close(w.fd)
        self._workers.clear()

    def _reap(self, now: float) -> None:
        for w in list(self._workers):
            try:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = w.pid, 0
            if pid == 0:
                continue
            self._workers.remove(w)
            if w.fd >= 0:
                self._selector.unregister(w.fd)
                os.close(w.fd)
                w.fd = -1
            self._exited(w, status, now)

    def _exited(self, w: _Worker, status: int, now: float) -> None:
        self.metrics.worker_exited(w.slot)
        code = os.waitstatus_to_exitcode(status)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if w.aborted:
            cause = "timeout"
        elif code == EXIT_BOOT_FAILED:
            cause = "boot_failure"
        elif w.stop_cause:
            cause = w.stop_cause
        elif code == EXIT_RECYCLED:
            cause = "max_requests"
        elif w.state == "booting":
            cause = "boot_failure"
        elif code == 0:
            cause = "exit"  # stopped by someone else's SIGTERM, say: drained and left
        else:
            cause = "crash"
        self.counts.exits[cause] = self.counts.exits.get(cause, 0) + 1
        fields: dict[str, Any] = {"worker": w.slot, "pid": w.pid, "cause": cause, "exit": how}
        fields["uptime_seconds"] = round(now - w.started, 3)
        if cause == "timeout":
            fields["stack"] = self._take_stack(w.slot)
            self.logger.error("worker aborted", **fields)
        elif cause == "boot_failure":
            self.logger.error("worker failed to boot", error=w.boot_error, **fields)
        elif cause == "crash":
            self.logger.error("worker died", **fields)
        elif cause == "exit":
            self.logger.warning("worker exited unasked", **fields)
        elif w.killed or code not in (0, EXIT_RECYCLED, EXIT_BOOT_FAILED):  # something was cut
            if not w.killed:
                self.forced += 1  # (killed ones were counted when killed)
            self.logger.warning("worker stopped", forced=True, **fields)
        else:
            self.logger.info("worker stopped", **fields)
        if cause in ("crash", "timeout", "boot_failure") and not (self._stopping or w.stop_cause):
            self.counts.restarts += 1
            if cause == "boot_failure" or now - w.started < _MIN_UPTIME:
                self._failed_boot(w, now)

    def _failed_boot(self, w: _Worker, now: float) -> None:
        if self._gave_up:
            return
        self._boot_failures += 1
        self._backoff = min(_BACKOFF_MAX, max(_BACKOFF_MIN, self._backoff * 2))
        self._next_spawn = now + self._backoff
        if self._boot_failures < self.boot_failure_limit:
            return
        serving = [x for x in self._workers if x.state == "ready"]
        if any(x.generation != self.generation for x in serving):
            old = max(x.generation for x in serving if x.generation != self.generation)
            self.logger.error(
                "reload failed: new workers cannot boot; the running workers stay",
                generation=self.generation, kept_generation=old, failures=self._boot_failures,
                error=w.boot_error,
            )  # fmt: skip
            for x in self._workers:
                if x.generation == self.generation and x.state == "booting":
                    self._stop_worker(x, "reload", now)
            self.generation = old
            self._boot_failures = 0
        elif not serving:
            self._gave_up = w.boot_error or "workers exit while booting"
            self.logger.error(
                f"workers failed to boot {self._boot_failures} times in a row; giving up",
                error=self._gave_up,
            )

    def _take_stack(self, slot: int) -> str:
        path = os.path.join(self._stacks_dir, f"w{slot}.txt")
        try:
            with open(path, "r+") as f:
                text = f.read()
                f.truncate(0)
        except OSError:
            return ""
        return text.strip()


def _migrates_requests() -> bool:
    """Whether the kernel moves a closed SO_REUSEPORT listener's queue to another one."""
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _drain_logs(timeout: float) -> None:
    try:
        from .telemetry.logsink import drain_all

        drain_all(timeout)
    except Exception:  # noqa: BLE001 - never in the way of an exit
        pass


class WorkerDirError(Exception):
    """The supervisor's folder (the workers' metric files and stacks) cannot be made.

    ``folder`` is where it was to go, None when no temporary folder is usable at all
    (``tempfile.gettempdir()`` found none writable); ``reason`` says why.
    """

    def __init__(self, folder: str | None, reason: str) -> None:
        super().__init__(f"{folder or 'no temporary folder'}: {reason}")
        self.folder = folder
        self.reason = reason


def _make_dir(base: str | None) -> tuple[str, int]:
    """Make this supervisor's folder in *base* (None: the system's temporary folder).

    Returns the folder and the file descriptor of its lock file, locked (exclusive
    ``flock``) for the supervisor's life: forked workers inherit the descriptor, so
    the kernel releases the lock only when the last of them is gone, however they
    die.  The folder is made under a hidden name, its lock file locked before it
    gets its name, then the folder renamed: a sweep by another supervisor never
    finds a folder in use unlocked.  Stale folders of dead supervisors in *base*
    are removed first.  Raises :class:`WorkerDirError`.
    """
    try:
        base = base if base is not None else tempfile.gettempdir()
    except OSError:  # FileNotFoundError: no candidate ($TMPDIR, /tmp, ..., cwd) is writable
        raise WorkerDirError(None, "no writable temporary folder") from None
    _remove_stale_dirs(base)
    fd, staging = -1, ""
    try:
        staging = tempfile.mkdtemp(prefix=f".{_DIR_PREFIX}{os.getpid()}-", dir=base)
        # The lock file appears under its name locked already (a sweep never sees it free).
        pending = os.path.join(staging, _LOCK_NAME + ".new")
        fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else has it
        os.rename(pending, os.path.join(staging, _LOCK_NAME))
        for name in ("metrics", "stacks"):
            os.mkdir(os.path.join(staging, name))
        folder = os.path.join(base, os.path.basename(staging)[1:])
        os.rename(staging, folder)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        raise WorkerDirError(base, exc.strerror or str(exc)) from None
    return folder, fd


def _remove_stale_dirs(base: str) -> None:
    """Remove the folders in *base* of supervisors that died without cleaning up (SIGKILL).

    A folder is stale when its lock can be taken: no supervisor or worker of it
    lives.  Not by pid: in a container's PID namespace every supervisor is pid 1,
    alive to the next one.  A folder without a lock file (made by an older version)
    is judged by its pid as before; a hidden one without it is being made.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return  # making the folder will say what is wrong with base
    for name in names:
        if not name.lstrip(".").startswith(_DIR_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDONLY)
        except FileNotFoundError:
            if not name.startswith(".") and not _pid_alive(name[len(_DIR_PREFIX) :]):
                shutil.rmtree(path, ignore_errors=True)
            continue
        except OSError:
            continue  # not a folder, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # held: in use (or this filesystem cannot say; leave it)
        else:  # nobody holds it: its supervisor and workers are all gone
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _pid_alive(rest: str) -> bool:
    """Whether the pid at the start of *rest* ("<pid>-<random>") is a live process."""
    pid_text = rest.split("-", 1)[0]
    if not pid_text.isdigit():
        return True  # not a name we made: leave it
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return True
