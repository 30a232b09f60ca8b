"""Admission: what stands between ``accept()`` and a worker.

Private helpers of :mod:`runtime.server`, kept apart so that module stays the
hook chain and the serving loop.

:class:`AcceptBackoff` — when ``accept()`` fails for lack of resources
(``EMFILE``: the process is out of file descriptors; ``ENFILE``, ``ENOBUFS``,
``ENOMEM``), the listener stays readable, so a loop that retries at once spins
(measured: about 330,000 failing ``accept()`` calls a second at 100% CPU).
The serving loop stops watching the listener for 5 ms, doubling to 1 s (Go's
``net/http`` does the same), and retries at once when a request finishes (an
fd was freed).  One log line per episode, one when it ends.

:class:`AwaitingRequests` — a connection gets a worker only once its request
has arrived.  A peer that connects and then trickles (slowloris: a byte every
few seconds) would otherwise hold a worker thread (or a sync worker) for as
long as it likes: 200 of them took every one of 128 threads.  Connections
whose handler reads a request head first (``http.server`` handlers; others that
declare ``request_head_end``) wait here, in the serving loop's selector, costing
a file descriptor and no thread, until the head is complete (looked at with
``MSG_PEEK``: nothing is consumed, the handler reads it as usual) or
``header_timeout`` passes (the connection is closed, outcome ``timed_out``).
A peer that trickles is looked at again only after a pause that doubles from
1 ms to 250 ms, so trickling costs a few peeks a second, not one per byte.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import resource
import select
import selectors
import socket
from collections.abc import Callable
from time import monotonic
from typing import Any

from ._record import RequestRecord

__all__ = ["HTTP", "AcceptBackoff", "AwaitingRequests", "head_complete"]

#: errno values of a failing ``accept()`` that retrying at once cannot cure.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BACKOFF_FIRST, BACKOFF_MAX = 0.005, 1.0

#: ``request_head_end`` of ``http.server`` handlers: a blank line ends the head.
HTTP = b"\n\n"
#: Bytes looked at for a head; a longer one goes to the handler, whose own limits apply
#: (``http.server``: 64 KiB per line, 100 header lines).
MAX_HEAD = 65536
_PEEK_FIRST, _PEEK_MAX = 0.001, 0.25
_MSG_PEEK_NOW = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


class AcceptBackoff:
    """The state of one episode of ``accept()`` failing for lack of resources."""

    def __init__(self) -> None:
        self.failures = 0  # in this episode (0: none going on)
        self.since = 0.0  # monotonic() of the episode's first failure
        self.until = 0.0  # do not try again before this
        self.delay = 0.0
        self.last_error = ""
        self.resume = False  # a request finished: an fd is free, try now

    @staticmethod
    def applies(exc: OSError) -> bool:
        return exc.errno in RESOURCE_ERRNOS

    @property
    def paused(self) -> bool:
        return self.failures > 0

    def failed(self, exc: OSError, now: float) -> bool:
        """Count a failure; True if it starts an episode (log it)."""
        first = self.failures == 0
        if first:
            self.since = now
            self.delay = BACKOFF_FIRST
        else:
            self.delay = min(BACKOFF_MAX, self.delay * 2)
        self.failures += 1
        self.until = now + self.delay
        self.resume = False
        self.last_error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return first

    def due(self, now: float) -> bool:
        """Whether to watch the listener again."""
        return self.resume or now >= self.until

    def succeeded(self) -> tuple[int, float] | None:
        """An accept worked: end the episode; (failures, seconds) if one was going on."""
        if self.failures == 0:
            return None
        ended = (self.failures, monotonic() - self.since)
        self.failures = 0
        self.resume = False
        return ended


def head_complete(data: bytes, end: bytes) -> bool:
    """Whether *data* holds a whole request head ending with *end* (``b""``: any byte)."""
    if end != HTTP:
        return end in data if end else bool(data)
    newline = data.find(b"\n")
    if newline < 0:
        return False
    # A request line http.server refuses (400) before reading headers: not HTTP at all.
    words = data[:newline].split()
    if not 2 <= len(words) <= 3 or (len(words) == 3 and not words[2].startswith(b"HTTP/")):
        return True
    return b"\n\n" in data or b"\n\r\n" in data


class _Waiting:
    __slots__ = ("deadline", "drained", "end", "pause", "record", "seq", "sock", "watched")

    def __init__(self, record: RequestRecord, end: bytes, deadline: float, seq: int) -> None:
        self.record = record
        self.sock: socket.socket = record.request
        self.end = end
        self.deadline = deadline
        self.pause = 0.0
        self.seq = seq
        self.watched = False
        self.drained = False  # a drain shortened its deadline: ending it then is no time-out


class AwaitingRequests:
    """Connections waiting for their request head, watched by one selector.

    *ready(record)* hands a complete one to the rest of the hook chain;
    *expired(record, outcome)* ends one that did not make it (``timed_out``: the
    deadline passed; ``client_closed``: the peer left first; ``""``: closed by
    the server, e.g. idle at a drain).  At most *limit* wait (by default a
    quarter of the file descriptor limit, at most 1024): beyond that the one
    closest to its deadline is ended.
    """

    def __init__(
        self,
        *,
        timeout: float,
        ready: Callable[[RequestRecord], None],
        expired: Callable[[RequestRecord, str], None],
        limit: int = 1024,
    ) -> None:
        self.timeout = timeout
        self._ready = ready
        self._expired = expired
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.limit = max(1, min(limit, soft // 4)) if soft > 0 else limit
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[int, _Waiting] = {}  # by fd
        self._timers: list[tuple[float, int, int]] = []  # (when, seq, fd)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def fileno(self) -> int:
        """The selector's fd: readable when a waiting connection is (epoll, kqueue)."""
        return self._selector.fileno() if hasattr(self._selector, "fileno") else -1

    def park(self, record: RequestRecord, end: bytes) -> bool:
        """Wait for *record*'s head, unless it is complete already (then False: go on)."""
        sock: socket.socket = record.request
        try:
            data = _peek(sock, MAX_HEAD)
        except BlockingIOError:
            data = None
        except OSError:
            return False  # the handler meets the error itself, as before
        if data is not None and (
            not data or head_complete(data, end) or len(data) >= MAX_HEAD or _peer_done(sock)
        ):
            return False
        if len(self._waiting) >= self.limit:
            self._evict()
        entry = _Waiting(record, end, monotonic() + self.timeout, next(self._seq))
        fd = sock.fileno()
        self._waiting[fd] = entry
        heapq.heappush(self._timers, (entry.deadline, entry.seq, fd))
        self._watch(fd, entry)
        return True

    def next_timer(self) -> float | None:
        """monotonic() of the next deadline or pause to act on, if any."""
        while self._timers:
            when, seq, fd = self._timers[0]
            entry = self._waiting.get(fd)
            if entry is not None and entry.seq == seq:
                return when
            heapq.heappop(self._timers)  # stale
        return None

    def service(self, timeout: float = 0.0) -> None:
        """Look at readable connections (waiting up to *timeout*) and act on due timers."""
        if not self._waiting:
            return
        for key, _ in self._selector.select(timeout):
            entry = self._waiting.get(key.fd)
            if entry is not None:
                self._look(key.fd, entry, monotonic())
        now = monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, seq, fd = heapq.heappop(self._timers)
            entry = self._waiting.get(fd)
            if entry is None or entry.seq != seq:
                continue
            if now >= entry.deadline:
                self._end(fd, entry, "" if entry.drained else "timed_out")
            else:  # its pause is over
                self._look(fd, entry, now)

    def close_idle(self, grace: float) -> int:
        """A drain: connections that sent nothing yet get *grace* seconds more; return how many.

        They were taken from the kernel's queue because their clients had just
        connected: a request is most likely on its way, so they are not cut at
        once, but neither may they hold the drain for a whole ``header_timeout``.
        """
        now = monotonic()
        idle = 0
        for fd, entry in list(self._waiting.items()):
            try:
                _peek(entry.sock, 1)
            except BlockingIOError:
                if now + grace < entry.deadline:
                    entry.deadline = now + grace
                    entry.drained = True
                    heapq.heappush(self._timers, (entry.deadline, entry.seq, fd))
                idle += 1
            except OSError:
                pass  # gone: service() sees it
        return idle

    def close_all(self, outcome: str) -> int:
        """End every waiting connection (forced, or at close); return how many."""
        entries = list(self._waiting.items())
        for fd, entry in entries:
            self._end(fd, entry, outcome)
        return len(entries)

    def release_in_child(self) -> None:
        """In a forked child: drop our copies of the waiting connections (not theirs)."""
        for entry in self._waiting.values():
            try:
                entry.sock.close()  # closes this process's copy only; no shutdown()
            except OSError:
                pass
        self._waiting.clear()
        self._timers.clear()
        self._selector.close()

    def close(self) -> None:
        self.close_all("")
        self._selector.close()

    # -- internals -----------------------------------------------------------------

    def _look(self, fd: int, entry: _Waiting, now: float) -> None:
        try:
            data = _peek(entry.sock, MAX_HEAD)
        except BlockingIOError:
            self._watch(fd, entry)
            return
        except OSError:
            self._end(fd, entry, "client_closed")
            return
        if not data:  # the peer closed before sending a request
            self._end(fd, entry, "client_closed")
            return
        if head_complete(data, entry.end) or len(data) >= MAX_HEAD or _peer_done(entry.sock):
            # Complete; or the peer will send nothing more (it half-closed or reset):
            # the handler reads what there is and meets the end, as without waiting.
            self._forget(fd, entry)
            self._ready(entry.record)
            return
        # Part of a head: look again after a pause, so a trickle costs little.
        entry.pause = min(_PEEK_MAX, entry.pause * 2) if entry.pause else _PEEK_FIRST
        if entry.watched:
            self._selector.unregister(fd)
            entry.watched = False
        heapq.heappush(self._timers, (min(now + entry.pause, entry.deadline), entry.seq, fd))

    def _watch(self, fd: int, entry: _Waiting) -> None:
        if not entry.watched:
            self._selector.register(fd, selectors.EVENT_READ)
            entry.watched = True

    def _forget(self, fd: int, entry: _Waiting) -> None:
        del self._waiting[fd]
        if entry.watched:
            self._selector.unregister(fd)
            entry.watched = False

    def _end(self, fd: int, entry: _Waiting, outcome: str) -> None:
        self._forget(fd, entry)
        self._expired(entry.record, outcome)

    def _evict(self) -> None:
        fd, entry = min(self._waiting.items(), key=lambda item: item[1].deadline)
        self._end(fd, entry, "timed_out")


_POLL_DONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def _peer_done(sock: socket.socket) -> bool:
    """Whether the peer has half-closed or reset: no more bytes will come (a poll, no wait)."""
    poller = select.poll()
    poller.register(sock.fileno(), _POLL_DONE)
    try:
        return any(events & _POLL_DONE for _, events in poller.poll(0))
    except OSError:
        return True


def _peek(sock: socket.socket, size: int) -> bytes:
    """What the peer sent, left in the kernel for the handler; BlockingIOError if nothing.

    A socket with a time-out (``socket.setdefaulttimeout``) would first wait for
    data, whatever the flags: look at it non-blocking for the moment.
    """
    timeout = sock.gettimeout()
    if timeout is None:  # blocking: MSG_DONTWAIT alone keeps recv from waiting
        return sock.recv(size, _MSG_PEEK_NOW)
    sock.settimeout(0.0)
    try:
        return sock.recv(size, socket.MSG_PEEK)
    finally:
        sock.settimeout(timeout)


def request_head_end(handler_class: Any) -> bytes | None:
    """What a handler class reads first: ``HTTP`` for ``http.server`` handlers, else its
    ``request_head_end`` attribute (``b""``: any byte; ``None``: hand over at once)."""
    import http.server

    factory = getattr(handler_class, "func", handler_class)  # functools.partial(Handler, ...)
    if not isinstance(factory, type):
        return None
    if hasattr(factory, "request_head_end"):
        end = factory.request_head_end
        return end if isinstance(end, bytes) else None
    if issubclass(factory, http.server.BaseHTTPRequestHandler):
        return HTTP
    return None
