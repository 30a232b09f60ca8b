"""The pre-fork pool's metrics: the workers' multiprocess files merged, and the supervisor's own.

Workers write prometheus-client's multiprocess files, one set per worker slot
(:func:`use_worker_files`, in the worker after the fork); the supervisor
serves them merged, with the pool's own families made from a
:class:`PoolSnapshot` it takes when scraped, and its process metrics.  The
pre-fork supervisor talks to this module only: it imports no metrics library.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .exposition import render
from .metrics import STATES, build_info, state_families
from .process import ProcessCollector

__all__ = ["PoolMetrics", "PoolSnapshot", "use_worker_files"]


@dataclass(frozen=True)
class PoolSnapshot:
    """What the pool's own families show, taken by the supervisor when scraped."""

    label: str
    transport: str
    state: str  # the lifecycle state
    stats: dict[str, float]  # the core's gauges summed over the workers
    workers: list[tuple[int, str, float]]  # (slot, state, heartbeat age in seconds)
    starts: int
    restarts: int
    exits: dict[str, int]  # by cause


class PoolMetrics:
    """The supervisor's registry: the workers' files in *directory*, *snapshot()*'s
    families, the process metrics of *pids()*, and its own dropped log lines."""

    def __init__(
        self,
        directory: str,
        prefix: str,
        *,
        snapshot: Callable[[], PoolSnapshot],
        pids: Callable[[], list[int]],
        exit_causes: Iterable[str],
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        #: The supervisor's own drops (its log lines), shown with the workers'.
        self.dropped: dict[str, int] = {"log_lines": 0}
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerFiles(directory, prefix, self.dropped))
        self.registry.register(_PoolCollector(prefix, snapshot, tuple(exit_causes)))
        self.registry.register(ProcessCollector(pids))
        build_info(self.registry, prefix)

    def count_dropped(self, what: str, count: int) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + count

    def render(self, accept: str = "") -> tuple[bytes, str]:
        return render(self.registry, accept)

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()

    def worker_exited(self, slot: int) -> None:
        """Slot *slot*'s worker exited: its live gauges go (its counters stay)."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(slot_name(slot), self.directory)  # type: ignore[no-untyped-call]


def slot_name(slot: int) -> str:
    """The name a slot's files go by (as a pid would: one set per slot, not per process)."""
    return f"w{slot}"


def use_worker_files(directory: str, slot: int) -> None:
    """In a worker, before its metrics exist: write prometheus-client's multiprocess
    files in *directory*, named for *slot* (a replacement continues its slot's counters).

    prometheus-client picks its value class when it is imported (by
    ``PROMETHEUS_MULTIPROC_DIR``); the supervisor imported it already, so the
    worker switches the class itself.
    """
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    name = slot_name(slot)
    values.ValueClass = values.MultiProcessValue(lambda: name)  # type: ignore[no-untyped-call]


class _WorkerFiles:
    """prometheus-client's multiprocess collector over the workers' files, minus files being born.

    A booting worker creates its file empty and then sizes it; prometheus-client
    fails the whole scrape on a file read in between (``unpack_from requires a
    buffer of at least 4 bytes``).  Such a file holds no value yet: skip it.
    """

    def __init__(self, path: str, prefix: str, supervisor_dropped: dict[str, int]) -> None:
        self.path = path
        self.dropped_name = prefix + "telemetry_dropped"
        self.supervisor_dropped = supervisor_dropped

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name).st_size >= 8:  # the used-bytes header is there
                    files.append(name)
        merged: list[Any] = list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
        # The supervisor's own dropped log lines join the workers' in the same family.
        own = dict(self.supervisor_dropped)
        for family in merged:
            if family.name != self.dropped_name:
                continue
            for i, sample in enumerate(family.samples):
                what = sample.labels.get("what")
                if sample.name.endswith("_total") and what in own:
                    family.samples[i] = sample._replace(value=sample.value + own.pop(what))
        if own:  # no worker has written the family yet
            family = CounterMetricFamily(
                self.dropped_name, "Log lines and spans dropped rather than block serving.",
                labels=["what"],
            )  # fmt: skip
            for what, count in own.items():
                family.add_metric([what], count)
            merged.append(family)
        return merged


class _PoolCollector:
    """The supervisor's own families, and the core's gauges summed over the slot table."""

    def __init__(
        self, prefix: str, snapshot: Callable[[], PoolSnapshot], exit_causes: tuple[str, ...]
    ) -> None:
        self.prefix = prefix
        self.snapshot = snapshot
        self.exit_causes = exit_causes

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        pool, p = self.snapshot(), self.prefix
        labels = [pool.label, pool.transport]
        yield from state_families(p, {(pool.label, pool.transport): pool.stats})
        state = GaugeMetricFamily(
            p + "lifecycle_state", "1 for the server's current lifecycle state.",
            labels=["server", "transport", "state"],
        )  # fmt: skip
        for name in STATES:
            state.add_metric([*labels, name], 1 if pool.state == name else 0)
        yield state
        processes = GaugeMetricFamily(
            p + "worker_processes", "Live pre-fork worker processes, by state.", labels=["state"]
        )
        for name in ("booting", "ready", "retiring", "stopping"):
            processes.add_metric([name], sum(1 for _, s, _ in pool.workers if s == name))
        beat = GaugeMetricFamily(
            p + "worker_heartbeat_age_seconds", "Seconds since each worker slot's last heartbeat.",
            labels=["worker"],
        )  # fmt: skip
        for slot, _, age in pool.workers:
            beat.add_metric([str(slot)], max(0.0, age))
        starts = CounterMetricFamily(p + "worker_starts", "Worker processes started.")
        starts.add_metric([], pool.starts)
        restarts = CounterMetricFamily(
            p + "worker_restarts", "Workers started to replace one that crashed, hung or failed."
        )
        restarts.add_metric([], pool.restarts)
        exits = CounterMetricFamily(
            p + "worker_exits", "Worker processes that exited, by cause.", labels=["cause"]
        )
        for cause in self.exit_causes:
            exits.add_metric([cause], pool.exits.get(cause, 0))
        yield from (processes, beat, starts, restarts, exits)
