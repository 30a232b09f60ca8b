"""Bounded pools: reused worker threads and a ceiling on forked children.

:class:`ThreadingMixIn` and :class:`ForkingMixIn` replace the standard
mix-ins of the same names (and subclass them, so ``isinstance`` checks hold).
Like the standard ones they override only ``process_request`` and
``server_close`` (plus ``collect_children`` for forking); they must come
before the server class in the bases, and work best over
:class:`runtime.server.InstrumentedMixIn`, whose hooks they call.
"""

from __future__ import annotations

import mmap
import os
import pickle
import queue
import selectors
import signal
import socket
import socketserver
import threading
from collections.abc import Callable
from time import monotonic, perf_counter
from typing import Any

from ._net import accept_queue_length
from ._record import HTTP_METHODS, Operation, RequestRecord
from .telemetry.api import NULL, NullTelemetry, ServerTelemetry

__all__ = ["ForkingMixIn", "ThreadingMixIn", "WorkerPool"]

#: Default ceiling of worker threads: high enough that 64 long-lived
#: (keep-alive) connections are all served at once, with room to spare.
DEFAULT_MAX_THREADS = 128
#: Seconds an idle worker thread waits for work before it retires.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds ``server_close`` waits for worker threads after a forced drain.
_FORCED_JOIN = 2.0

Item = tuple[Any, Any]


def _record_of(server: Any, request: Any) -> RequestRecord | None:
    """The core's record of *request* (None on a server without the runtime's mix-in)."""
    find = getattr(server, "request_record", None)
    return find(request) if find is not None else None


def _telemetry_of(server: Any) -> ServerTelemetry:
    """The server's bound telemetry (the core's interface), or one that does nothing."""
    return getattr(server, "server_telemetry", NULL)


class WorkerPool:
    """At most ``max_workers`` reused threads fed by a queue of ``queue_size`` items.

    Threads start lazily, one per item that finds no idle worker, and retire
    after ``idle_timeout`` seconds without work, so a quiet server holds few.
    ``submit`` never starts a thread past the ceiling: when every worker is
    busy and the queue is full it waits (backpressure) or returns False.

    Items travel through a C ``queue.SimpleQueue`` (the hand-off costs one
    put and one get, as in ``concurrent.futures``); one plain lock guards the
    counts that decide where an item goes (an idle worker, a new thread, the
    queue, or nowhere), and a condition on it is used only when the pool is
    full and ``submit`` waits.
    """

    def __init__(
        self,
        run: Callable[[Any, Any], None],
        *,
        max_workers: int,
        queue_size: int,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        daemon: bool = False,
        name: str = "worker",
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self._run = run
        self.max_workers = max_workers
        self.queue_size = queue_size
        self.idle_timeout = idle_timeout
        self._daemon = daemon
        self._name = name
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._waiting = 0  # submitters blocked on _space
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()  # None: stop
        self._queued = 0  # items put and not yet taken
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # workers waiting for an item
        self._closing = False
        self._started = 0
        #: monotonic() since when items wait for a worker (0.0: none waits)
        self.waiting_since = 0.0

    # Gauges: approximate reads without the lock are fine for scraping.
    @property
    def live(self) -> int:
        return len(self._threads)

    @property
    def idle(self) -> int:
        return max(0, self._idle - self._queued)

    @property
    def busy(self) -> int:
        return max(0, len(self._threads) - self.idle)

    @property
    def queue_depth(self) -> int:
        return max(0, self._queued - self._idle)

    def submit(
        self, item: Item, *, block: bool = True, on_wait: Callable[[], None] | None = None
    ) -> bool:
        """Hand *item* to a worker; False if full and not *block*.

        While blocked, *on_wait* runs about once a second (the serving loop's
        heartbeat, so a saturated server still reports itself alive).
        """
        with self._lock:
            while True:
                if self._closing:
                    raise RuntimeError("worker pool is shut down")
                if self._idle > self._queued:
                    self._queued += 1  # an idle worker takes it
                    self._queue.put(item)
                    return True
                if len(self._threads) < self.max_workers:
                    self._start(item)
                    return True
                if self._queued - self._idle < self.queue_size:
                    self._queued += 1  # it waits its turn
                    self._queue.put(item)
                    if not self.waiting_since:
                        self.waiting_since = monotonic()
                    return True
                if not block:
                    return False
                if not self.waiting_since:
                    self.waiting_since = monotonic()
                self._waiting += 1
                try:
                    notified = self._space.wait(1.0)
                finally:
                    self._waiting -= 1
                if not notified and on_wait is not None:
                    self._lock.release()
                    try:
                        on_wait()
                    finally:
                        self._lock.acquire()

    def wait_for_worker(self, timeout: float) -> bool:
        """Wait up to *timeout* until an item handed over now would start at once."""
        deadline = monotonic() + timeout
        with self._lock:
            while not (self._idle > self._queued or len(self._threads) < self.max_workers):
                remaining = deadline - monotonic()
                if remaining <= 0 or self._closing:
                    return False
                self._waiting += 1
                try:
                    self._space.wait(remaining)
                finally:
                    self._waiting -= 1
            return True

    def _start(self, item: Item) -> None:
        self._started += 1
        thread = threading.Thread(
            target=self._worker,
            args=(item,),
            name=f"{self._name}-{self._started}",
            daemon=self._daemon,
        )
        self._threads.add(thread)
        thread.start()

    def _worker(self, item: Item | None) -> None:
        run, get, lock = self._run, self._queue.get, self._lock
        while True:
            if item is not None:
                try:
                    run(*item)
                except Exception:  # noqa: BLE001 - a worker survives its work (handled already)
                    pass
                except BaseException:
                    # SystemExit, KeyboardInterrupt: the thread ends, as a thread of the
                    # standard library's ThreadingMixIn does (threading.excepthook sees it).
                    with lock:
                        self._threads.discard(threading.current_thread())
                        if self._waiting:
                            self._space.notify()
                    raise
            with lock:
                self._idle += 1
                if self._waiting:
                    self._space.notify()  # a submitter waiting for room can hand over now
            try:
                item = get(timeout=self.idle_timeout)
            except queue.Empty:
                with lock:
                    if self._queued >= self._idle:
                        # An item was handed over counting on this worker: take it.
                        self._idle -= 1
                        item = None
                        continue
                    self._idle -= 1  # idle too long: retire
                    self._threads.discard(threading.current_thread())
                    if self._waiting:
                        self._space.notify()
                    return
            with lock:
                self._idle -= 1
                if item is None:  # shutting down, every item before it done
                    self._threads.discard(threading.current_thread())
                    if self._waiting:
                        self._space.notify_all()
                    return
                self._queued -= 1
                if self._waiting:
                    self._space.notify()
                elif self._queued <= self._idle:
                    self.waiting_since = 0.0  # nothing left waiting

    def shutdown(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Let workers finish every queued item, then stop them.

        With *wait*, join them, for at most *timeout* seconds in all (None: as long
        as it takes); False if some were still running then.
        """
        with self._lock:
            self._closing = True
            self._space.notify_all()
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)  # after every item: FIFO
        if not wait:
            return True
        deadline = None if timeout is None else monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
        return not any(thread.is_alive() for thread in threads)


class ThreadingMixIn(socketserver.ThreadingMixIn):
    """Run each request on a bounded pool of reused worker threads.

    Class variables that may be overridden by derived classes or instances:

    - ``max_children``: ceiling of worker threads (default 128)
    - ``queue_size``: hand-off queue length; ``None`` means ``max_children``
    - ``overload``: ``"wait"`` (the accept loop waits for room: backpressure to
      the kernel's backlog) or ``"reject"`` (``handle_overload`` is called)
    - ``idle_timeout``: seconds before an idle worker retires
    - ``daemon_threads``, ``block_on_close``: as in the standard library

    Methods that may be overridden:

    - ``handle_overload(request, client_address)``: called instead of
      processing when the pool is full under the reject policy; the request
      is shut down after it returns (default: nothing, so it is just closed).
    """

    runtime_mode = "thread"
    max_children: int = DEFAULT_MAX_THREADS
    queue_size: int | None = None
    overload: str = "wait"
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: False: take a connection only when a thread is free to run it at once.
    #: Pre-fork workers sharing a listener set this, so a connection waits in
    #: the kernel for any worker with a free thread, not in one busy worker's queue.
    accept_when_busy: bool = True
    _pool_workers: WorkerPool | None = None
    _pool_full_since = 0.0  # (accept_when_busy off) every thread taken, connections queued

    # Provided by InstrumentedMixIn / BaseServer; declared for mypy.
    server_label: str | None

    def _pool_get_pool(self) -> WorkerPool:
        pool = self._pool_workers
        if pool is None:
            queue_size = self.max_children if self.queue_size is None else self.queue_size
            pool = self._pool_workers = WorkerPool(
                self.process_request_thread,
                max_workers=self.max_children,
                queue_size=queue_size,
                idle_timeout=self.idle_timeout,
                daemon=self.daemon_threads,
                name=f"{getattr(self, 'server_label', None) or type(self).__name__}-worker",
            )
        return pool

    def _pool_room(self, wait: float) -> bool:
        # Without accept_when_busy, a connection is taken only when a thread is free;
        # otherwise the serving loop turns (ticks, heartbeat) and looks again.
        if self.accept_when_busy:
            return True
        if self._pool_get_pool().wait_for_worker(wait):
            self._pool_full_since = 0.0
            return True
        if not self._pool_full_since:
            # Connections wait in the kernel's queue while every thread is taken.
            queued = sum(accept_queue_length(sock, 0) for sock in _listeners(self))
            if queued:
                self._pool_full_since = monotonic()
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the request to a worker thread (or wait, or reject, when full)."""
        record = _record_of(self, request)
        if record is not None:
            record.queued = perf_counter()
        block = self.overload != "reject"
        pool = self._pool_get_pool()
        if pool.idle == 0 and pool.live >= pool.max_workers:
            self._pool_reclaim(pool.queue_depth + 1)
        if pool.submit((request, client_address), block=block, on_wait=self._pool_wait):
            return
        if record is not None:
            record.rejected = "overload"
        try:
            self.handle_overload(request, client_address)
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def handle_overload(self, request: Any, client_address: Any) -> None:
        """Called when the pool is full under the reject policy. May be overridden."""

    def _pool_reclaim(self, wanted: int) -> None:
        # Every thread is taken and connections wait: keep-alive connections idle
        # for a while give theirs up (InstrumentedMixIn.reclaim_idle).
        reclaim = getattr(self, "reclaim_idle", None)
        if reclaim is not None:
            reclaim(wanted)

    def _pool_wait(self) -> None:
        """About once a second while the serving loop waits for room in the pool."""
        heartbeat = getattr(self, "loop_heartbeat", None)
        if heartbeat is not None:
            heartbeat()
        self._pool_reclaim(1)

    def service_actions(self) -> None:
        super().service_actions()  # type: ignore[misc]
        pool = self._pool_workers
        if pool is not None and pool.waiting_since:
            self._pool_reclaim(pool.queue_depth)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run on a worker: finish the request, report errors, always shut it down."""
        record = _record_of(self, request)
        if record is not None and record.queued:
            _telemetry_of(self).queue_wait(perf_counter() - record.queued)
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a failing handler never stops the server
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            # (SystemExit and the like end this thread, as the standard library's would)
            self.shutdown_request(request)  # type: ignore[attr-defined]

    def _pool_waiting_since(self) -> float | None:
        pool = self._pool_workers
        since = [t for t in (pool.waiting_since if pool else 0.0, self._pool_full_since) if t]
        return min(since) if since else None

    def runtime_stats(self) -> dict[str, float]:
        stats: dict[str, float] = super().runtime_stats()  # type: ignore[misc]
        pool = self._pool_workers
        stats["workers_max"] = self.max_children
        stats["workers_busy"] = pool.busy if pool else 0
        stats["workers_idle"] = pool.idle if pool else 0
        stats["queue_depth"] = pool.queue_depth if pool else 0
        return stats

    def server_close(self) -> None:
        super().server_close()
        pool = self._pool_workers
        if pool is not None:
            # After a forced drain a handler may be stuck where no cut reaches it (a
            # lock, a computation): waiting for it forever would make SIGTERM hang.
            timeout = _FORCED_JOIN if getattr(self, "drain_forced", False) else None
            wait = self.block_on_close and not self.daemon_threads
            self._pool_workers = None  # (it holds our bound method: a cycle otherwise)
            if not pool.shutdown(wait=wait, timeout=timeout):
                logger = getattr(self, "logger", None)
                if logger is not None:
                    logger.warning(
                        "worker threads still running after the forced drain; left behind",
                        server=getattr(self, "server_label", None),
                        threads=pool.live,
                    )


class _Child:
    __slots__ = ("buffer", "hooks_before", "pid", "pipe", "record", "slot")

    def __init__(self, pid: int, pipe: int, record: RequestRecord | None, slot: int) -> None:
        self.pid = pid
        self.pipe = pipe
        self.record = record
        self.slot = slot
        self.hooks_before = len(record.hooks) if record is not None else 0
        self.buffer = bytearray()


#: A slot's byte: 0 when its child serves no HTTP request, else 1 + the method's index
#: here (the standard methods, then "_OTHER").
_METHOD_LABELS = (*HTTP_METHODS, "_OTHER")
_METHOD_CODES = {method: code for code, method in enumerate(_METHOD_LABELS, 1)}
_OTHER_CODE = len(_METHOD_LABELS)


class _ActiveSlots:
    """Which HTTP request each forked child is serving now, for the parent's
    ``http_server_active_requests``: one byte per child in memory the children share
    with the parent (an anonymous shared mapping made before the first fork).  A child
    writes its own byte as a request starts and ends (no system call, no message); the
    parent reads them at scrape time and clears a child's when it reaps it."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._memory = mmap.mmap(-1, self.size)
        self._free = list(range(self.size - 1, -1, -1))

    def take(self) -> int:
        """A free slot (-1 when every one is taken: that child is not counted)."""
        if not self._free:
            return -1
        return self._free.pop()  # zero: new, or cleared when released

    def release(self, slot: int) -> None:
        if slot >= 0:
            self._memory[slot] = 0  # a child killed mid-request serves nothing now
            self._free.append(slot)

    def mark(self, slot: int, method: str | None) -> None:
        """In a child: its request in progress (*method*), or none (None)."""
        if slot >= 0:
            code = _METHOD_CODES.get(method, _OTHER_CODE) if method is not None else 0
            self._memory[slot] = code

    def counts(self, slots: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for slot in slots:
            try:
                code = self._memory[slot] if slot >= 0 else 0
            except ValueError:  # closed by server_close meanwhile: nothing in progress
                return {}
            if code:
                label = _METHOD_LABELS[code - 1]
                counts[label] = counts.get(label, 0) + 1
        return counts

    def close(self) -> None:
        self._memory.close()


class _ChildTelemetry(NullTelemetry):
    """In a forked child: keep the request's span current, report nothing.

    The child's hook timings travel to the parent in the record; the parent
    reports them, so no per-request telemetry state is created in children.
    """

    def __init__(
        self, parent: ServerTelemetry, slots: _ActiveSlots | None = None, slot: int = -1
    ) -> None:
        self._parent = parent
        self._slots = slots
        self._slot = slot
        #: What the metrics take of each finished operation (HTTP request): for the parent.
        self.operations: list[Any] = []

    def activate(self, record: RequestRecord) -> object:
        return self._parent.activate(record)

    # Operations: their spans are made (and captured) here, their metrics in the parent
    # (and an HTTP request in progress in the slot the parent reads).
    def operation_started(self, op: Operation, carrier: Any, *, count: bool = True) -> object:
        if self._slots is not None and op.kind == "http":
            self._slots.mark(self._slot, op.method)
        return self._parent.operation_started(op, carrier, count=False)

    def operation_finished(self, op: Operation, end: float, *, count: bool = True) -> None:
        self._parent.operation_finished(op, end, count=False)
        self.operations.append(op.summary(end - op.start))
        if self._slots is not None and op.kind == "http":
            self._slots.mark(self._slot, None)

    def deactivate(self, token: object) -> None:
        self._parent.deactivate(token)


class ForkingMixIn(socketserver.ForkingMixIn):
    """Handle each request in a child process, never more than ``max_children`` live.

    Each child gets a pipe to the parent; it writes its hook timings and
    outcome there before it exits, and the parent folds them into the
    request's metrics and trace.  End-of-file on that pipe tells the parent
    the child is gone, so zombies are reaped without scanning every pid and
    without ever reaping processes the server did not start.  State held
    per child (one pipe, one record) is bounded by ``max_children``.
    """

    timeout: float | None = 300
    max_children: int = 40
    block_on_close = True
    runtime_mode = "fork"
    _pool_children: dict[int, _Child] | None = None
    _pool_child_selector: selectors.BaseSelector | None = None
    _pool_slots: _ActiveSlots | None = None
    _pool_slot_wait = 0.0  # monotonic() since when the loop waits for a free slot

    @property
    def _pool_kids(self) -> dict[int, _Child]:
        if self._pool_children is None:
            self._pool_children = {}
            self._pool_child_selector = selectors.DefaultSelector()
        return self._pool_children

    @property
    def active_children(self) -> set[int] | None:
        """The pids of live children (read-only view, as in the standard library)."""
        return set(self._pool_children) if self._pool_children else None

    @active_children.setter
    def active_children(self, value: Any) -> None:
        pass  # the standard mix-in assigns it; our state is _pool_children

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork a child for the request, first waiting for a free slot if at the limit."""
        children = self._pool_kids
        if len(children) >= self.max_children:
            start = perf_counter()
            self._pool_slot_wait = monotonic()
            heartbeat = getattr(self, "loop_heartbeat", None)
            try:
                while len(children) >= self.max_children:
                    self._pool_reap(1.0)
                    if heartbeat is not None:
                        heartbeat()
            finally:
                self._pool_slot_wait = 0.0
            _telemetry_of(self).queue_wait(perf_counter() - start)
        record = _record_of(self, request)
        slots = self._pool_slots
        if slots is None or (slots.size < self.max_children and not children):
            if slots is not None:  # max_children grew: no live child uses the old mapping
                slots.close()
            slots = self._pool_slots = _ActiveSlots(self.max_children)
        slot = slots.take()
        try:
            read_end, write_end = os.pipe()
        except OSError:
            slots.release(slot)
            raise
        # The drain's signal must not reach a child before it can handle it (SIGUSR2
        # would end it): blocked across the fork, the child unblocks it once ready.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {_DRAIN_SIGNAL})
        try:
            pid = os.fork()
        except OSError:  # e.g. EAGAIN at a process limit: the loop reports it
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_end)
            os.close(write_end)
            slots.release(slot)
            raise
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(write_end)
            if record is not None:
                record.pid = pid
            children[pid] = _Child(pid, read_end, record, slot)
            assert self._pool_child_selector is not None
            self._pool_child_selector.register(read_end, selectors.EVENT_READ, pid)
            self.close_request(request)  # type: ignore[attr-defined]
            return
        os.close(read_end)
        signal.signal(_DRAIN_SIGNAL, lambda _s, _f: self._pool_child_drains())
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._pool_child_main(request, client_address, record, write_end, slot)

    def _pool_child_drains(self) -> None:
        """In a child, on the parent's drain signal: first "draining", then "close idle"."""
        if not getattr(self, "draining", True):
            self.begin_drain()
        else:
            close_idle = getattr(self, "close_idle", None)
            if close_idle is not None:
                close_idle()

    def begin_drain(self) -> None:
        parent = getattr(super(), "begin_drain", None)
        if parent is not None:
            parent()
        self._pool_tell_children()

    def close_idle(self) -> int:
        parent = getattr(super(), "close_idle", None)
        closed = int(parent()) if parent is not None else 0
        self._pool_tell_children()
        return closed

    def _pool_tell_children(self) -> None:
        """The drain's steps reach the children too (an HTTP child ends its keep-alive)."""
        for pid in list(self._pool_children or ()):
            try:
                os.kill(pid, _DRAIN_SIGNAL)
            except ProcessLookupError:
                pass

    def _pool_child_main(
        self, request: Any, client_address: Any, record: RequestRecord | None, pipe: int,
        slot: int,
    ) -> None:  # fmt: skip
        # This must never return, hence os._exit().
        status = 1
        try:
            # The parent decides when a child stops (drain, then force);
            # a Ctrl-C sent to the whole process group must not cut requests.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
            parent_tel: ServerTelemetry = getattr(self, "server_telemetry", NULL)
            parent_tel.child_begin()
            self._pool_children = None
            if self.socket_type == socket.SOCK_STREAM:  # type: ignore[attr-defined]
                # Our copy of the listener would keep it open (and accepting into
                # the backlog) after the parent closes it during a drain.
                for sock in _listeners(self):
                    sock.close()
            in_child = getattr(self, "forked_child", None)
            child_tel = _ChildTelemetry(parent_tel, self._pool_slots, slot)
            if in_child is not None:  # the loop's other connections are the parent's
                in_child(child_tel)
            before = len(record.hooks) if record is not None else 0
            try:
                self.finish_request(request, client_address)  # type: ignore[attr-defined]
                status = 0
            except Exception:  # noqa: BLE001 - reported, then the child exits 1
                self.handle_error(request, client_address)  # type: ignore[attr-defined]
            finally:
                try:
                    self.shutdown_request(request)  # type: ignore[attr-defined]
                finally:
                    if record is not None:
                        report = (
                            record.hooks[before:],
                            record.error_hook,
                            record.error_type,
                            parent_tel.child_end(),
                            perf_counter(),  # CLOCK_MONOTONIC: comparable in the parent
                            record.fields,
                            record.io,
                            record.ended,
                            (record.operations, record.http, child_tel.operations),
                            # a PROXY header's client, a refusal, the TLS session
                            (record.rejected, record.client_address, record.tls),
                        )
                        _write_all(pipe, pickle.dumps(report, pickle.HIGHEST_PROTOCOL))
        finally:
            _drain_logs(0.1)  # os._exit skips the exit-time write of pending log lines
            os._exit(status)

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap children that have exited; with *blocking*, wait for all of them."""
        if not self._pool_children:
            return
        if not blocking:
            self._pool_reap(0)
            return
        while self._pool_children:
            self._pool_reap(None)

    def _pool_reap(self, timeout: float | None) -> int:
        """Read child reports; reap those whose pipe closed. Returns how many were reaped."""
        selector = self._pool_child_selector
        if selector is None or not self._pool_children:
            return 0
        reaped = 0
        for key, _ in selector.select(timeout):
            child = self._pool_children.get(key.data)
            if child is None:
                continue
            try:
                chunk = os.read(child.pipe, 65536)
            except BlockingIOError:
                continue
            if chunk:
                child.buffer += chunk
                continue
            self._pool_child_done(child)
            reaped += 1
        return reaped

    def _pool_child_done(self, child: _Child) -> None:
        assert self._pool_child_selector is not None and self._pool_children is not None
        self._pool_child_selector.unregister(child.pipe)
        os.close(child.pipe)
        del self._pool_children[child.pid]
        try:
            _, wait_status = os.waitpid(child.pid, 0)  # pipe closed: the child is exiting
            code = os.waitstatus_to_exitcode(wait_status)
        except ChildProcessError:
            code = 0
        if self._pool_slots is not None:
            self._pool_slots.release(child.slot)
        tel = _telemetry_of(self)
        status = "ok" if code == 0 else ("signal" if code < 0 else "error")
        tel.child_reaped(status)
        record = child.record
        if record is None:
            return
        end = None
        if child.buffer:
            report = pickle.loads(bytes(child.buffer))
            hooks, error_hook, error_type, extra, end, fields, record.io, ended, ops, peer = report
            record.rejected, record.client_address, record.tls = peer
            record.operations, record.http, summaries = ops
            for summary in summaries:
                tel.operation_observed(summary)
            if ended and not record.ended:
                record.ended = ended
            if fields:
                record.fields = fields
            if extra is not None:
                tel.child_merge(extra)
            for name, start, end in hooks:
                record.hooks.append((name, start, end))
                tel.hook(name, end - start, record)
            if error_type and not record.error_type:
                record.error_hook, record.error_type = error_hook, error_type
        if code < 0 and not record.error_type:
            record.error_hook = "process_request"
            record.error_type = _signal_name(-code)
        elif code > 0 and not record.error_type:
            record.error_hook, record.error_type = "process_request", "ChildExit"
        release = getattr(self, "release_record", None)
        if release is not None:
            release(record, end)  # stands for the child's shutdown_request

    def _pool_loop_fds(self) -> list[int]:
        # The loop waits on our selector too: a child's pipe closing wakes it,
        # and service_actions reaps that child at once (not a poll_interval later).
        self._pool_kids  # noqa: B018 - creates the selector
        fds: list[int] = super()._pool_loop_fds()  # type: ignore[misc]
        fileno = getattr(self._pool_child_selector, "fileno", None)  # epoll, kqueue: yes
        return [*fds, fileno()] if fileno is not None else fds

    def _pool_waiting_since(self) -> float | None:
        return self._pool_slot_wait or None

    def child_pids(self) -> list[int]:
        """The pids of the children still running."""
        return list(self._pool_children or ())

    def http_requests_in_progress(self) -> dict[str, int]:
        """HTTP requests the children are serving now, by method label (``GET``...,
        ``_OTHER``): the parent's ``http_server_active_requests``."""
        slots, children = self._pool_slots, self._pool_children
        if slots is None or not children:
            return {}
        return slots.counts([child.slot for child in list(children.values())])

    def runtime_stats(self) -> dict[str, float]:
        stats: dict[str, float] = super().runtime_stats()  # type: ignore[misc]
        stats["workers_max"] = self.max_children
        stats["workers_busy"] = len(self._pool_children or ())
        stats["workers_idle"] = 0
        stats["queue_depth"] = 0
        return stats

    def wait_for_idle(self, deadline: float, heartbeat: Callable[[], None] | None = None) -> bool:
        while self._pool_children:
            remaining = deadline - perf_counter()
            if remaining <= 0:
                return False
            self._pool_reap(min(remaining, 1.0))
            if heartbeat is not None:
                heartbeat()
        waited: bool = super().wait_for_idle(deadline, heartbeat)  # type: ignore[misc]
        return waited

    def force_close(self) -> int:
        """Kill the children still running (SIGKILL) and reap them."""
        forced = 0
        for pid in list(self._pool_children or ()):
            try:
                os.kill(pid, signal.SIGKILL)
                forced += 1
            except ProcessLookupError:
                pass
        self.collect_children(blocking=True)
        return forced

    def server_close(self) -> None:
        super().server_close()
        if self._pool_child_selector is not None and not self._pool_children:
            self._pool_child_selector.close()
            if self._pool_slots is not None:
                self._pool_slots.close()
                self._pool_slots = None
            self._pool_child_selector = None


#: Parent to child: the drain began (first), the listener closed: close idle (second).
_DRAIN_SIGNAL = signal.SIGUSR2


def _drain_logs(timeout: float) -> None:
    """Give log lines still waiting for a congested stream a moment (bounded) to go out."""
    try:
        from .telemetry.logsink import drain_all

        drain_all(timeout)
    except Exception:  # noqa: BLE001 - never in the way of a child's exit
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _listeners(server: Any) -> list[Any]:
    """The server's listening sockets (one, unless it is instrumented and was given more)."""
    listeners = getattr(server, "listeners", None)
    return list(listeners()) if listeners is not None else [server.socket]
