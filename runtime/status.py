"""What the admin port's status page (``/``) shows, as one JSON document.

:class:`StatusBoard` samples the server's own Prometheus counters and latency
histogram every ``interval`` seconds on a daemon thread and keeps ``history``
samples, so the page's charts (request rate, p50/p90/p99) cost the serving
path nothing: the numbers are the ones ``/metrics`` exports, differenced
between samples and turned into quantiles the way ``histogram_quantile``
does.  Totals are read at request time, so they are exact.  The slowest
recent requests and the latest errors come from the telemetry's
:class:`~runtime.telemetry.recent.RecentRequests`.

Outcomes are counted apart, as on the dashboard: ``client_closed`` (the
client left mid-request) and ``timed_out`` (a time limit ended it) are
neither errors (the error rate and the error list leave them out) nor served
requests (the latency quantiles leave them out, as the latency SLO does: they
last as long as the client dawdled or the limit allowed).
"""

from __future__ import annotations

import itertools
import os
import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .lifecycle import Lifecycle

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = ["StatusBoard", "quantile"]

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class _Sample:
    wall: float  # time.time()
    mono: float  # time.monotonic()
    counts: dict[str, float]  # requests by outcome, cumulative
    buckets: tuple[float, ...]  # cumulative latency bucket counts (_SERVED), +Inf last


class StatusBoard:
    """Samples and serves the status of one runtime (its lifecycle and servers)."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        servers: Sequence[Any],  # each has runtime_status(): a server, or a pre-fork pool
        telemetry: Telemetry | None = None,
        *,
        families: Callable[[], Iterable[Any]] | None = None,
        prefix: str = "socketserver_",
        workers: Callable[[], list[dict[str, Any]]] | None = None,
        interval: float = 5.0,
        history: int = 120,
    ) -> None:
        self.lifecycle = lifecycle
        self.servers = list(servers)
        self.telemetry = telemetry
        #: Without *telemetry*: where the request families come from (a pre-fork
        #: supervisor's registry, the workers' counters merged), named with *prefix*.
        self.families = families
        self.prefix = prefix
        self.workers = workers
        self.interval = interval
        self.started = time.time()
        self._samples: deque[_Sample] = deque(maxlen=history + 1)
        self._bounds: tuple[float, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sample()

    # -- sampling -------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="runtime-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def counting(self) -> bool:
        """Whether there are request counters to show (totals, charts)."""
        return self.telemetry is not None or self.families is not None

    def sample(self) -> None:
        """Take one sample of the counters (the sampler thread calls this)."""
        if self.telemetry is not None:
            self.telemetry.recent.rotate()
        if self.counting:
            self._samples.append(self._read(self._collect()))

    def _collect(self) -> dict[str, list[Any]]:
        """The request families by role: requests, duration, slow, timed_out."""
        if self.telemetry is not None:
            m = self.telemetry.metrics
            return {
                "requests": list(m.requests.collect()),
                "duration": list(m.request_duration.collect()),
                "slow": list(m.slow.collect()),
                "timed_out": list(m.timed_out.collect()),
                "http": list(m.http_collect()),
            }
        assert self.families is not None
        p = self.prefix
        names = {
            p + "requests": "requests", p + "request_duration_seconds": "duration",
            p + "requests_slow": "slow", p + "requests_timed_out": "timed_out",
            "http_server_request_duration_seconds": "http",
        }  # fmt: skip
        found: dict[str, list[Any]] = {role: [] for role in names.values()}
        for family in self.families():
            role = names.get(family.name)
            if role is not None:
                found[role].append(family)
        return found

    def _read(self, families: dict[str, list[Any]]) -> _Sample:
        counts: dict[str, float] = {}
        for labels, value in _samples(families["requests"], "_total"):
            outcome = labels["outcome"]
            counts[outcome] = counts.get(outcome, 0.0) + value
        buckets: dict[float, float] = {}
        for labels, value in _samples(families["duration"], "_bucket"):
            if labels["outcome"] in _SERVED:
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
        self._bounds = tuple(sorted(buckets))
        cumulative = tuple(buckets[le] for le in self._bounds)
        return _Sample(time.time(), time.monotonic(), counts, cumulative)

    # -- the document -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-serialisable."""
        now = time.time()
        lifecycle = self.lifecycle
        doc: dict[str, Any] = {
            "version": __version__,
            "python": platform.python_version(),
            "pid": os.getpid(),
            "now": now,
            "started": self.started,
            "uptime_seconds": round(now - self.started, 3),
            "state": lifecycle.state.value,
            "ready": lifecycle.ready(),
            "live": lifecycle.live(),
            "heartbeat_age_seconds": round(lifecycle.heartbeat_age(), 3),
            "servers": [server.runtime_status() for server in self.servers],
            "telemetry": self.counting,
            "recent": self.telemetry is not None,
            "interval_seconds": self.interval,
        }
        if self.workers is not None:
            doc["workers"] = self.workers()
        if not self.counting:
            return doc
        families = self._collect()
        current = self._read(families)
        samples = [*self._samples, current]
        totals = {outcome: int(current.counts.get(outcome, 0)) for outcome in _OUTCOMES}
        totals["requests"] = sum(totals.values())
        # Not outcomes: slow ones still end ok or error, the watchdog's are some of timed_out.
        for role, key in (("slow", "slow"), ("timed_out", "watchdog_timed_out")):
            totals[key] = int(sum(v for _, v in _samples(families[role], "_total")))
        recent = self.telemetry.recent if self.telemetry is not None else None
        window = recent.window if recent is not None else _WINDOW
        window_start = _first_within(samples, current.mono - window)
        doc.update(
            totals=totals,
            window_seconds=window,
            window=_interval(window_start, current, self._bounds),
            history=[_interval(a, b, self._bounds) for a, b in itertools.pairwise(samples)],
            slowest=recent.slowest() if recent is not None else [],
            errors=_errors(recent.errors()) if recent is not None else [],
            routes=_routes(families["http"]),
        )
        return doc


#: Every outcome (the metric catalogue's, ``runtime.telemetry.metrics.OUTCOMES``).
_OUTCOMES = ("ok", "error", "rejected", "client_closed", "timed_out")
#: Served requests, whose duration is the server's latency: not refused at once
#: (rejected), nor as long as a client stayed or a limit allowed (client_closed, timed_out).
_SERVED = frozenset({"ok", "error"})
_WINDOW = 300.0  # seconds: the latency card's window without a RecentRequests (its default)


#: Rows of the routes table (the busiest first).
_ROUTES = 30


def _routes(families: Iterable[Any]) -> list[dict[str, Any]]:
    """HTTP requests by server, method, route and status, from the duration histogram
    (so in every mode, pre-fork's summed workers included): count and mean."""
    rows: dict[tuple[str, str, str, str], list[float]] = {}
    for family in families:
        for sample in family.samples:
            kind = sample.name.rpartition("_")[2]
            if kind not in ("count", "sum"):
                continue
            labels = sample.labels
            key = (
                labels.get("server", ""), labels.get("http_request_method", ""),
                labels.get("http_route", ""), labels.get("http_response_status_code", ""),
            )  # fmt: skip
            row = rows.setdefault(key, [0.0, 0.0])
            row[0 if kind == "count" else 1] += sample.value
    ordered = sorted(rows.items(), key=lambda item: -item[1][0])
    return [
        {
            "server": server, "method": method, "route": route,
            "status": int(status) if status.isdigit() else 0, "count": int(count),
            "mean_ms": round(total / count * 1000, 3) if count else 0.0,
        }
        for (server, method, route, status), (count, total) in ordered[:_ROUTES]
        if count
    ]  # fmt: skip


def _errors(recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's errors among the recent failures: not clients that left, nor time-outs."""
    return [entry for entry in recent if entry.get("outcome") == "error"]


def _samples(families: Iterable[Any], suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    for family in families:
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


def _first_within(samples: list[_Sample], since: float) -> _Sample:
    for sample in samples:
        if sample.mono >= since:
            return sample
    return samples[-1]


def _interval(a: _Sample, b: _Sample, bounds: tuple[float, ...]) -> dict[str, Any]:
    """Rate and latency quantiles between two samples."""
    seconds = max(b.mono - a.mono, 1e-9)
    done = {k: b.counts.get(k, 0.0) - a.counts.get(k, 0.0) for k in _OUTCOMES}
    point: dict[str, Any] = {
        "t": b.wall,
        "seconds": round(seconds, 3),
        "requests": int(sum(done.values())),
        "rate": round(sum(done.values()) / seconds, 3),
        "error_rate": round(done["error"] / seconds, 3),
        "rejected_rate": round(done["rejected"] / seconds, 3),
        "client_closed_rate": round(done["client_closed"] / seconds, 3),
        "timed_out_rate": round(done["timed_out"] / seconds, 3),
    }
    counts: list[float] = []
    if len(a.buckets) == len(b.buckets):  # the same buckets (they never change in one run)
        counts = [y - x for x, y in zip(a.buckets, b.buckets, strict=True)]
    for q in QUANTILES:
        value = quantile(q, bounds, counts)
        point[f"p{round(q * 100):d}_ms"] = None if value is None else round(value * 1000, 3)
    return point


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """The *q* quantile of a histogram, interpolated as Prometheus' ``histogram_quantile``.

    *bounds* are the buckets' upper bounds (``inf`` last) and *cumulative*
    their cumulative counts.  None when the histogram is empty.
    """
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    below, lower = 0.0, 0.0
    for upper, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if upper == float("inf"):
                return lower  # as Prometheus: the highest finite bound
            in_bucket = count - below
            if in_bucket <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / in_bucket
        below, lower = count, upper
    return lower
