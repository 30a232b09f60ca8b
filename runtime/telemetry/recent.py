"""The slowest recent requests and the latest errors, for the admin status page.

Fed once per finished request by the bound telemetry.  The common case costs
one float comparison: a request is kept only if it is slower than the fastest
of the ``keep`` slowest of the current slice, or failed.  Slices of
``window / slices`` seconds rotate on :meth:`RecentRequests.rotate` (called
by the status sampler, never on the hot path), so "slowest" always means "of
the last ``window`` seconds", not "since start".
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import traceback
from collections import deque
from typing import Any

from .._net import format_address
from .._record import RequestRecord

__all__ = ["RecentRequests"]

#: (duration, sequence, summary): a min-heap keeps the slowest ``keep``.
_Entry = tuple[float, int, dict[str, Any]]

#: Longest error message kept (a handler's exception text can be anything).
MAX_MESSAGE = 300


class RecentRequests:
    """Slowest requests of the last *window* seconds and the last *errors* failures."""

    def __init__(
        self, *, keep: int = 10, window: float = 300.0, slices: int = 5, errors: int = 20
    ) -> None:
        self.keep = keep
        self.window = window
        self._slice_seconds = window / slices
        self._slices: deque[list[_Entry]] = deque([[]], maxlen=slices)
        self._slice_started = time.monotonic()
        self._floor = -1.0  # a request must be slower than this to enter the current slice
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._errors: deque[dict[str, Any]] = deque(maxlen=errors)

    def observe(self, server: str, record: RequestRecord, seconds: float) -> None:
        """Called once per finished request (any thread)."""
        if record.error_type and not record.rejected and not record.ended:  # errors only
            self._errors.append(_error_summary(server, record, seconds))
        if seconds <= self._floor:
            return
        entry = (seconds, next(self._seq), _summary(server, record, seconds))
        with self._lock:
            current = self._slices[-1]
            if len(current) < self.keep:
                heapq.heappush(current, entry)
            else:
                heapq.heappushpop(current, entry)
            if len(current) >= self.keep:
                self._floor = current[0][0]

    def operation_error(self, server: str, summary: Any) -> None:
        """An HTTP request (or a marked operation) that failed: among the latest errors."""
        kind, method, status, route, error_type, outcome, seconds = summary[:7]
        trace = summary[9] or {}
        if kind == "http":
            what = f"{method} {route or '(no route)'} -> {status or 'no response'}"
        else:
            what = f"operation {kind}"
        self._errors.append(
            {
                "server": server, "started": time.time() - seconds,
                "duration_ms": round(seconds * 1000, 3), "outcome": outcome,
                "error_type": error_type, "hook": "http" if kind == "http" else "operation",
                "message": what[:MAX_MESSAGE], "where": "", "client": "",
                "trace_id": trace.get("trace_id", ""), "span_id": trace.get("span_id", ""),
            }
        )  # fmt: skip

    def rotate(self, now: float | None = None) -> None:
        """Start a new slice when the current one is old enough (the sampler calls this)."""
        now = time.monotonic() if now is None else now
        if now - self._slice_started < self._slice_seconds:
            return
        with self._lock:
            self._slices.append([])
            self._slice_started = now
            self._floor = -1.0

    def slowest(self) -> list[dict[str, Any]]:
        """The ``keep`` slowest requests of the window, slowest first."""
        with self._lock:
            entries = [entry for heap in self._slices for entry in heap]
        return [summary for _, _, summary in heapq.nlargest(self.keep, entries)]

    def errors(self) -> list[dict[str, Any]]:
        """The latest failed requests, newest first."""
        return list(reversed(self._errors))


def _summary(server: str, record: RequestRecord, seconds: float) -> dict[str, Any]:
    trace = record.exemplar or {}
    return {
        "server": server,
        "client": format_address(record.client_address),
        "started": record.wall_ns / 1e9,
        "duration_ms": round(seconds * 1000, 3),
        "outcome": record.outcome,
        "trace_id": trace.get("trace_id", ""),
        "span_id": trace.get("span_id", ""),
        "hooks": [  # start_ms: from taking the request (a gap is queue wait)
            {
                "hook": name,
                "start_ms": round((start - record.perf) * 1000, 3),
                "ms": round((end - start) * 1000, 3),
            }
            for name, start, end in record.hooks
        ],
    }


def _error_summary(server: str, record: RequestRecord, seconds: float) -> dict[str, Any]:
    summary = _summary(server, record, seconds)
    del summary["hooks"]
    summary["hook"] = record.error_hook
    summary["error_type"] = record.error_type
    error = record.error
    summary["message"] = str(error)[:MAX_MESSAGE] if error is not None else ""
    where = ""
    if error is not None and error.__traceback__ is not None:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{frame.filename}:{frame.lineno} in {frame.name}"
    summary["where"] = where
    return summary
