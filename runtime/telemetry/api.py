"""The one small interface between the server core and telemetry.

The core (``server.py``, ``pools.py``, ``lifecycle.py``) reports to a
:class:`ServerTelemetry`; it never imports prometheus_client or opentelemetry.
:data:`NULL` does nothing, so a server built without telemetry pays one
method call per hook and nothing else.

The request record it reports about is the core's (``runtime/_record.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from .._record import HookTiming, Operation, OperationSummary, RequestRecord, bind, current_request

__all__ = [
    "NULL",
    "HookTiming",
    "NullTelemetry",
    "Operation",
    "RequestRecord",
    "ServerTelemetry",
    "bind",
    "current_request",
]


class ServerTelemetry(Protocol):
    """Telemetry bound to one server (its ``server`` and ``transport`` labels).

    Hot-path methods are called once per request or hook and must be cheap.
    Every hook timing goes through :meth:`hook` (metrics) and is also kept in
    ``record.hooks`` (traces read them in :meth:`request_finished`).  Gauges
    are pulled at scrape time from the server's ``runtime_stats()``.
    """

    def request_started(self, record: RequestRecord) -> None: ...

    def activate(self, record: RequestRecord) -> object:
        """Make the request's span current; return a token for :meth:`deactivate`."""
        ...

    def deactivate(self, token: object) -> None: ...

    def hook(self, name: str, seconds: float, record: RequestRecord | None = None) -> None: ...

    def request_finished(self, record: RequestRecord, end: float) -> None: ...

    # Operations inside a connection: HTTP requests, operations handlers mark.
    def operation_started(self, op: Operation, carrier: Any, *, count: bool = True) -> object:
        """*op* began: its span (parent from *carrier*'s headers, or the current context),
        made current; return a token for :meth:`deactivate` (None: nothing was made current).

        *count* False: the span only (a forked child: its parent counts the summary)."""
        ...

    def operation_finished(self, op: Operation, end: float, *, count: bool = True) -> None: ...

    def operation_observed(self, summary: OperationSummary) -> None:
        """A forked child's finished operation (its ``operation_summary``), for the metrics."""
        ...

    def rejected(self, reason: str) -> None: ...

    def error(self, hook: str, error_type: str) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def child_reaped(self, status: str) -> None: ...

    def request_slow(self) -> None: ...

    def request_timed_out(self) -> None: ...

    def datagram_truncated(self) -> None:
        """A datagram longer than ``max_packet_size`` arrived and was cut to it."""
        ...

    def state_changed(self, state: str) -> None: ...

    def flush(self, timeout: float) -> int:
        """Export what is queued, within *timeout* seconds; return how many spans were dropped."""
        ...

    # Forked children: begin/end run in the child around the request, and what
    # child_end returns (picklable) reaches child_merge in the parent.
    def child_begin(self) -> None: ...

    def child_end(self) -> object: ...

    def child_merge(self, payload: object) -> None: ...


class NullTelemetry:
    """Does nothing; the default when no telemetry is configured."""

    def request_started(self, record: RequestRecord) -> None:
        pass

    def activate(self, record: RequestRecord) -> object:
        return None

    def deactivate(self, token: object) -> None:
        pass

    def hook(self, name: str, seconds: float, record: RequestRecord | None = None) -> None:
        pass

    def request_finished(self, record: RequestRecord, end: float) -> None:
        pass

    def operation_started(self, op: Operation, carrier: Any, *, count: bool = True) -> object:
        return None

    def operation_finished(self, op: Operation, end: float, *, count: bool = True) -> None:
        pass

    def operation_observed(self, summary: OperationSummary) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def error(self, hook: str, error_type: str) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def child_reaped(self, status: str) -> None:
        pass

    def request_slow(self) -> None:
        pass

    def request_timed_out(self) -> None:
        pass

    def datagram_truncated(self) -> None:
        pass

    def state_changed(self, state: str) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0

    def child_begin(self) -> None:
        pass

    def child_end(self) -> object:
        return None

    def child_merge(self, payload: object) -> None:
        pass


NULL: ServerTelemetry = NullTelemetry()
