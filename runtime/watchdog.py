"""The watchdog: slow and hung requests, and the on-demand state dump.

It runs on its own thread and reads the server's requests in flight:

- a request older than ``warn_after`` is logged once, with the stack of the
  thread running it (that thread only), and counted;
- a request older than ``timeout`` is ended: in thread mode its socket is
  shut down so the handler's blocking I/O fails; in fork mode its child is
  killed.  Counted, and the request fails with ``RequestTimeout``;
- :meth:`Watchdog.dump` (SIGUSR1) logs the lifecycle state, the pool and every
  request in flight with its age.

Signal handlers only set an event here; logging happens on the watchdog's
thread, never inside a signal handler (which could interrupt a thread that
holds the log's lock).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import traceback
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from ._net import format_address
from ._record import RequestRecord

if TYPE_CHECKING:
    from ._served import ServedServer

__all__ = ["RequestTimeout", "Watchdog"]

_WARNED, _TIMED_OUT = 1, 2
#: Requests listed in one state dump, oldest first.
MAX_DUMPED = 100


class RequestTimeout(Exception):
    """A request ran longer than ``request_timeout`` and was ended by the watchdog."""


class Watchdog:
    """Watch *server*'s requests from a daemon thread.

    ``warn_after``/``timeout``: seconds, or None to disable; ``lifecycle``:
    for the state dump (optional).
    """

    def __init__(
        self,
        server: ServedServer,
        *,
        warn_after: float | None = None,
        timeout: float | None = None,
        lifecycle: Any = None,
        logger: Any = None,
    ) -> None:
        self.server = server
        self.warn_after = warn_after
        self.timeout = timeout
        self.lifecycle = lifecycle
        self.logger = logger if logger is not None else server.logger
        limits = [t for t in (warn_after, timeout) if t is not None]
        # Check often enough to act within about a tenth of the shortest limit.
        self.interval = min(1.0, max(0.01, min(limits) / 10)) if limits else 1.0
        self._wake = threading.Event()
        self._dump_requested = False
        self._stopped = False
        self._started_at = monotonic()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="runtime-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def request_dump(self) -> None:
        """Ask for a state dump (safe from a signal handler)."""
        self._dump_requested = True
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                if self._dump_requested:  # even when stopping: it was asked for
                    self._dump_requested = False
                    self.dump()
                if self._stopped:
                    return
                self.check()
            except Exception:  # the watchdog must outlive its own failures
                self.logger.exception("watchdog failed", server=self.server.server_label)

    # -- the checks ----------------------------------------------------------------

    def check(self) -> None:
        """Warn about and end the requests that overran; safe to call from any thread."""
        if self.warn_after is None and self.timeout is None:
            return
        now = perf_counter()
        for record in self.server.requests_in_flight():
            age = now - record.perf
            if self.timeout is not None and age > self.timeout and not record.watch & _TIMED_OUT:
                record.watch |= _TIMED_OUT | _WARNED
                self._end(record, age)
            elif (
                self.warn_after is not None and age > self.warn_after and not record.watch & _WARNED
            ):
                record.watch |= _WARNED
                self.server.server_telemetry.request_slow()
                self.logger.warning(
                    "slow request",
                    server=self.server.server_label,
                    client=format_address(record.client_address),
                    age_s=round(age, 3),
                    warn_after=self.warn_after,
                    **_where(record),
                )

    def _end(self, record: RequestRecord, age: float) -> None:
        where = _where(record)  # the stack before we cut the request
        record.fail("watchdog", RequestTimeout(f"ran {age:.3f}s, timeout {self.timeout}s"))
        record.ended = "timed_out"
        self.server.server_telemetry.request_timed_out()
        if record.pid:
            try:
                os.kill(record.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif isinstance(record.request, socket.socket):
            try:
                record.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.logger.error(
            "request timed out",
            server=self.server.server_label,
            client=format_address(record.client_address),
            age_s=round(age, 3),
            timeout=self.timeout,
            action="killed child" if record.pid else "connection shut down",
            **where,
        )

    def dump(self) -> None:
        """Log the lifecycle, the pool and every request in flight with its age."""
        now = perf_counter()
        records = sorted(self.server.requests_in_flight(), key=lambda r: r.perf)
        requests = [
            {
                "client": format_address(r.client_address),
                "age_s": round(now - r.perf, 3),
                "last_hook": r.hooks[-1][0] if r.hooks else None,  # last one finished
                **({"pid": r.pid} if r.pid else {}),
            }
            for r in records[:MAX_DUMPED]
        ]
        self.logger.info(
            "state",
            server=self.server.server_label,
            state=self.lifecycle.state.value if self.lifecycle is not None else None,
            uptime_s=round(monotonic() - self._started_at, 3),
            pool=self.server.runtime_stats(),
            in_flight=len(records),
            requests=requests,
        )


def _where(record: RequestRecord) -> dict[str, Any]:
    """The stack of the thread running *record* (only that one), or its child's pid."""
    if record.pid:
        return {"pid": record.pid}
    frame = sys._current_frames().get(record.thread) if record.thread else None
    if frame is None:
        return {}
    stack = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_stack(frame)]
    return {"thread": record.thread, "stack": stack}
