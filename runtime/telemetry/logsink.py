"""Log lines that never block serving: :class:`LogSink`.

A pipe nobody drains (a stuck log shipper, a paused ``docker logs``, a full
journald) used to stop the server: 64 KiB of access lines filled the pipe and
every thread blocked in its ``write``.  A :class:`LogSink` is the text stream
every runtime writer goes through (structlog lines, the direct access writer,
stdlib ``logging`` records).  Its ``write`` never waits for the reader: what
the stream does not take at once waits in a bounded buffer that a helper
thread writes out as the reader catches up; what does not fit is dropped,
counted (``dropped``, ``on_drop``) and, once the buffer has drained, reported
by one line (event ``log lines dropped``, level warning, with the count).

How a descriptor is written, decided once per destination:

- A pipe, FIFO or terminal is reopened through ``/proc/self/fd/N`` with
  ``O_NONBLOCK``.  Setting ``O_NONBLOCK`` on fd 2 itself would be wrong: the
  flag belongs to the open file description, shared with the parent shell and
  every other process writing there (pre-fork workers share the
  supervisor's), which would start failing with EAGAIN.  The reopened
  description is ours alone (the workers inherit it, and want the same).
- A socket (journald's stdout is a Unix stream socket, which ``/proc`` does
  not reopen) is written with ``send(..., MSG_DONTWAIT)``: non-blocking per
  call, the description untouched.
- A regular file (or block device) is written directly, as before: such a
  write never waits for a reader, and a reopen would lose the file's offset.
- Anything else (no ``/proc``, a pipe we may not reopen) falls back to a
  writer thread fed by the same bounded buffer, doing the blocking writes
  (every line then pays a wake-up, and a burst that outruns the thread can
  overflow the buffer even while the reader keeps up).
- A stream without a descriptor (a ``StringIO``, pytest's capture) is written
  directly, under a lock.

Why not a writer thread for everything: the hot path would pay a queue and a
thread wake-up per line.  The non-blocking direct write costs an uncontended
lock and the same one system call as before; the helper thread exists only
while the stream is congested.  Measured (``bench/breakdown.py``'s row
"access line, direct", written to ``/dev/null``, which takes the non-blocking
path): 5.2 us before, 5.5 us now; to a regular file 6.1 us both; to a drained
pipe about 7 us both (noisier than the difference).

Lines stay whole and in order within a process.  A write is one line (one
``write`` call).  While anything is pending, new lines queue behind it, so a
line partly taken by the stream (a line longer than PIPE_BUF, or any line on
a socket) is completed before the next one starts.  Across processes sharing
a pipe, a line up to PIPE_BUF (4096 bytes) is written atomically by the
kernel, pending or not; longer lines can interleave with other processes'
lines, as they always could.  The buffer drops whole new lines, never the
rest of a line already begun, and never reorders (keeping the newest instead
would mean rewriting the queue under the writers' lock; what matters is that
the gap is counted and said).  Its bound, :data:`DEFAULT_MAX_PENDING` per
process, absorbs a burst of about a thousand access lines.

Forks: a child starts with a fresh lock, an empty buffer and zero counts
(``os.register_at_fork``): the parent's pending lines are the parent's to
write, and a lock some parent thread held must not be inherited held.

Exit: ``atexit`` gives pending lines up to :data:`EXIT_DRAIN_SECONDS` to be
written, then leaves (a process ending with ``os._exit`` skips it; call
:func:`drain_all` first).  Lines still pending then are lost, and so is
the report of a stream that never took writes again: nobody would have read
it.

Lines dropped because the stream failed (EPIPE, EBADF, ENOSPC) are counted
too, but not reported in the stream that just failed.

Signal handlers must not log through a sink (the runtime's only record the
signal): a handler that interrupts a write would wait for the lock its own
thread holds.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import socket
import stat
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "DEFAULT_MAX_PENDING",
    "EXIT_DRAIN_SECONDS",
    "LogSink",
    "drain_all",
    "json_report",
    "sink_for",
    "stderr_sink",
]

#: Bytes of lines waiting for a congested stream before new lines are dropped:
#: about a thousand access lines, a burst a slow reader can still catch up with.
DEFAULT_MAX_PENDING = 256 * 1024
#: How long the process, exiting, waits for pending lines to be written.
EXIT_DRAIN_SECONDS = 1.0
#: Largest write a pipe takes whole or not at all.
PIPE_BUF: int = getattr(select, "PIPE_BUF", 4096)
#: The helper re-checks its stream this often while the reader takes nothing.
_POLL_MS = 500
#: Pause when the stream said writable but took nothing (do not spin).
_RETRY_SECONDS = 0.01
_DONTWAIT = socket.MSG_DONTWAIT


def json_report(count: int) -> str:
    """The default "lines dropped" line (JSON, like the runtime's own lines)."""
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    event = {"count": count, "pid": os.getpid(), "event": "log lines dropped"}
    return json.dumps({**event, "level": "warning", "timestamp": now}) + "\n"


class LogSink:
    """A text stream for log lines whose ``write`` never blocks.

    *stream*: where lines go: an object with ``fileno()`` (pipe, FIFO,
    terminal, socket, regular file), one without (written directly), or None
    for whatever ``sys.stderr`` is at each write (tests replace it).

    Each ``write`` call is one line.  What a congested stream cannot take waits
    in a buffer of up to *max_pending* bytes; a line that does not fit is
    dropped: ``dropped`` counts them (this process's), *on_drop* (settable
    later) is called with each number dropped (it must not log), and once the
    buffer drains, one line made by ``render_report(count)`` reports them.

    Thread-safe; one sink per destination (see :func:`sink_for`), shared by
    every writer of the process, keeps their lines whole and in order.
    """

    def __init__(
        self,
        stream: Any = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.stream = stream
        self.max_pending = max_pending
        self.on_drop = on_drop
        self.render_report: Callable[[int], str] = json_report
        self.dropped = 0
        self._lock = threading.Lock()  # fd-less targets; counts
        # (target, its channel or None): swapped as one tuple, read without a lock.
        self._route: tuple[Any, _Channel | None] = (_UNSET, None)
        _LIVE.add(self)

    # -- the file interface ----------------------------------------------------------

    def write(self, text: str) -> int:
        """Write one line (or queue it, or drop it); never waits for the reader."""
        target = sys.stderr if self.stream is None else self.stream
        route = self._route
        if route[0] is not target:
            route = self._resolve(target)
        channel = route[1]
        if channel is None:  # no descriptor: StringIO and the like never block
            if target is None:  # no stderr at all (closed, pythonw): nowhere to write
                return len(text)
            with self._lock:
                target.write(text)
                target.flush()
        else:
            channel.write(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def flush(self) -> None:
        """Flush a descriptor-less target; otherwise nothing (writes are unbuffered)."""
        target = sys.stderr if self.stream is None else self.stream
        if self._route[0] is target and self._route[1] is None:
            with self._lock:
                target.flush()

    def isatty(self) -> bool:
        target = sys.stderr if self.stream is None else self.stream
        try:
            return bool(target.isatty())
        except (AttributeError, OSError, ValueError):
            return False

    # -- beyond a file -----------------------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for pending lines to be written; True if none is left."""
        channel = self._route[1]
        return channel is None or channel.drain(time.monotonic() + timeout)

    def close(self) -> None:
        """Release the descriptor the sink opened (pending lines are lost; see :meth:`drain`).

        The stream itself stays open (it is the caller's); a later write opens
        a new route to it.
        """
        with self._lock:
            channel = self._route[1]
            self._route = (_UNSET, None)
        if channel is not None:
            channel.close()

    @property
    def pending(self) -> int:
        """Bytes waiting for the stream."""
        channel = self._route[1]
        return 0 if channel is None else channel.size

    def _resolve(self, target: Any) -> tuple[Any, _Channel | None]:
        with self._lock:
            route = self._route
            if route[0] is not target:
                try:
                    fd = target.fileno()
                except (AttributeError, OSError, ValueError):
                    route = (target, None)
                else:
                    route = (target, _Channel(self, fd))
                self._route = route
        return route

    def _count(self, n: int) -> None:
        """Report *n* dropped lines to ``on_drop`` (``dropped`` is already counted)."""
        callback = self.on_drop
        if callback is not None:
            try:
                callback(n)
            except Exception:  # noqa: BLE001 - counting must never break a writer
                pass

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.dropped = 0
        channel = self._route[1]
        if channel is not None:
            channel.after_fork()


class _Unset:
    pass


_UNSET = _Unset()


class _Channel:
    """One descriptor's writer: non-blocking writes, the pending buffer, the helper thread."""

    def __init__(self, sink: LogSink, fd: int) -> None:
        self.sink = sink
        self.fd = fd
        self.out = fd  # the descriptor written (ours, for a reopened pipe)
        self.sock: socket.socket | None = None
        self.kind = "file"
        self._finalize: Callable[[], object] = lambda: None  # releases what we opened
        self._new_state()
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return  # a closed stderr: each write fails and is counted
        if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
            return
        try:
            if stat.S_ISSOCK(mode):
                copy = os.dup(fd)
                try:
                    self.sock = socket.socket(fileno=copy)
                except OSError:
                    os.close(copy)
                    raise
                self.kind = "socket"
            else:
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
                self.out = os.open(f"/proc/self/fd/{fd}", flags)
                self.kind = "pipe"
                self._finalize = weakref.finalize(self, os.close, self.out)
        except OSError:  # no /proc, not ours to reopen, no reader yet: blocking writes, off-thread
            self.kind = "thread"
        if self.sock is not None:
            self._finalize = weakref.finalize(self, self.sock.close)
        if isinstance(self._finalize, weakref.finalize):
            self._finalize.atexit = False  # the exit drain still needs it

    def _new_state(self) -> None:
        self.lock = threading.Lock()
        self.more = threading.Condition(self.lock)  # work for a waiting helper (thread kind)
        self.idle = threading.Condition(self.lock)  # the buffer has drained
        self.pending: deque[bytes] = deque()
        self.size = 0
        self.unreported = 0
        self.report: bytes | None = None  # the report line while it is pending
        self.helper: threading.Thread | None = None
        self.closed = False

    def after_fork(self) -> None:
        self._new_state()

    def close(self) -> None:
        """Drop what is pending and release the descriptor of our own."""
        with self.lock:
            self.closed = True
            self.pending.clear()
            self.size = 0
            self.unreported = 0
            self.idle.notify_all()
            self.more.notify_all()
            self._finalize()

    # -- the writer's side (any thread) --------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.kind == "file":
            self._write_file(data)
            return
        dropped = 0
        with self.lock:
            if self.closed:
                return
            if self.pending or self.unreported or self.kind == "thread":
                dropped = self._queue(data)
            else:
                try:  # (_send, inlined: the hot path)
                    sock = self.sock
                    n = os.write(self.out, data) if sock is None else sock.send(data, _DONTWAIT)
                except BlockingIOError:
                    n = 0
                except OSError:  # the stream failed (EPIPE, EBADF): nothing to queue for
                    n = len(data)
                    dropped = 1
                    self.sink.dropped += 1
                if n < len(data):  # the rest must follow before any other line
                    self._append(data[n:] if n else data)
        if dropped:
            self.sink._count(dropped)

    def _write_file(self, data: bytes) -> None:
        try:
            while data:  # a short write only happens for huge lines or full disks
                data = data[os.write(self.fd, data) :]
        except OSError:
            with self.sink._lock:
                self.sink.dropped += 1
            self.sink._count(1)

    def _queue(self, data: bytes) -> int:
        """Queue *data* behind what is pending (lock held); 1 if it was dropped instead."""
        if self.size + len(data) > self.sink.max_pending:
            self.unreported += 1
            self.sink.dropped += 1
            self._start_helper()
            return 1
        self._append(data)
        return 0

    def _append(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)
        self._start_helper()
        if self.kind == "thread":
            self.more.notify()

    def _start_helper(self) -> None:
        if self.helper is None:
            self.helper = threading.Thread(target=self._run, name="log-sink", daemon=True)
            try:
                self.helper.start()
            except RuntimeError:  # no thread to be had: the next line tries again
                self.helper = None

    def _send(self, data: bytes) -> int:
        if self.sock is not None:
            return self.sock.send(data, _DONTWAIT)
        return os.write(self.out, data)

    # -- the helper thread ---------------------------------------------------------------

    def _run(self) -> None:
        poller = None
        if self.kind != "thread":
            poller = select.poll()
            fd = self.sock.fileno() if self.sock is not None else self.out
            poller.register(fd, select.POLLOUT)
        while True:
            with self.lock:
                if self.helper is not threading.current_thread() or self.closed:
                    return  # forked and replaced, or closed
                while not self.pending and not self.unreported:
                    self.idle.notify_all()
                    if self.kind != "thread":
                        self.helper = None
                        return
                    self.more.wait()
                if not self.pending:  # drained: say what was dropped, in order
                    line = self.sink.render_report(self.unreported)
                    self.report = line.encode("utf-8", "backslashreplace")
                    self.unreported = 0
                    self.pending.append(self.report)
                    self.size += len(self.report)
                chunk = self._chunk()
            if poller is None:  # the fallback: a blocking write, off the writers' path
                n = self._try(chunk, blocking=True)
            elif not poller.poll(_POLL_MS):
                continue
            dropped = 0
            with self.lock:
                if poller is not None:  # non-blocking: under the lock, while the fd is ours
                    if self.closed:
                        return
                    n = self._try(chunk, blocking=False)
                if n < 0:
                    dropped = self._discard()
                else:
                    self._consume(n)
            if dropped:
                self.sink._count(dropped)
            if n == 0:
                time.sleep(_RETRY_SECONDS)  # writable, yet nothing taken: do not spin

    def _try(self, chunk: bytes, *, blocking: bool) -> int:
        """Bytes written, 0 if the stream is full, -1 if it failed."""
        try:
            return os.write(self.fd, chunk) if blocking else self._send(chunk)
        except BlockingIOError:
            return 0
        except OSError:
            return -1

    def _chunk(self) -> bytes:
        """The next write: the head, or whole lines joined up to PIPE_BUF (still atomic)."""
        head = self.pending[0]
        if len(head) >= PIPE_BUF or len(self.pending) == 1:
            return head
        parts, total = [], 0
        for item in self.pending:
            if total + len(item) > PIPE_BUF:
                break
            parts.append(item)
            total += len(item)
        return b"".join(parts)

    def _consume(self, n: int) -> None:
        """Forget the first *n* bytes pending: written."""
        pending = self.pending
        while n and pending:
            head = pending[0]
            if len(head) <= n:
                pending.popleft()
                self.size -= len(head)
                n -= len(head)
                if head is self.report:
                    self.report = None
            else:
                pending[0] = head[n:]
                self.size -= n
                n = 0

    def _discard(self) -> int:
        """The stream failed: drop everything pending; the number of log lines dropped."""
        lines = sum(1 for item in self.pending if item is not self.report)
        self.pending.clear()
        self.size = 0
        self.report = None
        self.unreported = 0  # not reported in a stream that just failed
        self.sink.dropped += lines
        return lines

    def drain(self, deadline: float) -> bool:
        with self.lock:
            while self.pending or self.unreported:
                left = deadline - time.monotonic()
                if left <= 0 or self.helper is None:
                    return False
                self.idle.wait(left)
            return True


# -- the process's sinks --------------------------------------------------------------

_LIVE: weakref.WeakSet[LogSink] = weakref.WeakSet()
_SINKS: weakref.WeakValueDictionary[int, LogSink] = weakref.WeakValueDictionary()
_SINKS_LOCK = threading.Lock()
_STDERR: list[LogSink] = []


def stderr_sink() -> LogSink:
    """The process's sink for ``sys.stderr`` (whatever it is at each write)."""
    with _SINKS_LOCK:
        if not _STDERR:
            _STDERR.append(LogSink())
        return _STDERR[0]


def sink_for(stream: Any) -> LogSink:
    """The sink writing to *stream* (None: stderr), shared by every writer that asks.

    One sink per destination keeps lines of different writers whole and in
    order: they share one pending buffer.
    """
    if stream is None:
        return stderr_sink()
    if isinstance(stream, LogSink):
        return stream
    with _SINKS_LOCK:
        sink = _SINKS.get(id(stream))
        if sink is None or sink.stream is not stream:  # an id reused by a new stream
            sink = LogSink(stream)
            _SINKS[id(stream)] = sink
        return sink


def _after_fork_in_child() -> None:
    global _SINKS_LOCK
    _SINKS_LOCK = threading.Lock()
    for sink in list(_LIVE):
        sink._after_fork()


def drain_all(timeout: float) -> bool:
    """Give every sink's pending lines up to *timeout* seconds in all; True if all went out.

    For a process about to leave by ``os._exit`` (a forked child, a pre-fork
    worker), which skips the ``atexit`` drain.
    """
    deadline = time.monotonic() + timeout
    done = True
    for sink in list(_LIVE):
        channel = sink._route[1]
        if channel is not None:
            done = channel.drain(deadline) and done
    return done


def _drain_at_exit() -> None:
    drain_all(EXIT_DRAIN_SECONDS)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_drain_at_exit)
