"""Process metrics from psutil, read at scrape time (nothing on the request path).

Standard ``process_*`` names, so dashboards written for other exporters work.
In fork mode the live children of the server's own pools are counted and
their resident memory summed; only those pids are read, never a scan of
every process on the host.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ProcessCollector"]


class ProcessCollector(Collector):
    """CPU, memory, file descriptors, threads and context switches of this process.

    *child_pids* returns the pids of the forked children to account for
    (``process_children``, ``process_children_resident_memory_bytes``).
    """

    def __init__(self, child_pids: Callable[[], Iterable[int]] | None = None) -> None:
        self._child_pids = child_pids
        self._process: psutil.Process | None = None
        self._pid = -1

    def _me(self) -> psutil.Process:
        # Re-resolved after a fork, so a forked worker reports itself.
        if self._process is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._process = psutil.Process(self._pid)
        return self._process

    def describe(self) -> Iterable[Any]:
        return []  # families are built at scrape time; nothing to pre-register

    def collect(self) -> Iterable[Any]:
        me = self._me()
        with me.oneshot():
            cpu = me.cpu_times()
            memory = me.memory_info()
            fds = me.num_fds()
            threads = me.num_threads()
            switches = me.num_ctx_switches()
            started = me.create_time()
        families: list[Any] = []

        def gauge(name: str, doc: str, value: float) -> None:
            families.append(GaugeMetricFamily(name, doc, value=value))

        families.append(
            CounterMetricFamily(
                "process_cpu_seconds", "User and system CPU time of this process.",
                value=cpu.user + cpu.system,
            )
        )  # fmt: skip
        families.append(
            CounterMetricFamily(
                "process_children_cpu_seconds",
                "User and system CPU time of this process's children that have exited.",
                value=cpu.children_user + cpu.children_system,
            )
        )
        gauge("process_resident_memory_bytes", "Resident memory size.", memory.rss)
        gauge("process_virtual_memory_bytes", "Virtual memory size.", memory.vms)
        gauge("process_open_fds", "Open file descriptors.", fds)
        gauge("process_max_fds", "Soft limit of file descriptors.", _max_fds())
        gauge("process_threads", "Operating system threads of this process.", threads)
        gauge("process_start_time_seconds", "Start time, seconds since the epoch.", started)
        ctx = CounterMetricFamily(
            "process_context_switches", "Context switches by kind.", labels=["kind"]
        )
        ctx.add_metric(["voluntary"], switches.voluntary)
        ctx.add_metric(["involuntary"], switches.involuntary)
        families.append(ctx)
        if self._child_pids is not None:
            count, rss = 0, 0
            for pid in self._child_pids():
                try:
                    rss += psutil.Process(pid).memory_info().rss
                    count += 1
                except psutil.Error:  # exited (or not ours any more) since it was listed
                    continue
            gauge("process_children", "Live forked children of this server.", count)
            gauge(
                "process_children_resident_memory_bytes",
                "Resident memory of the live forked children, summed.", rss,
            )  # fmt: skip
        return families


def _max_fds() -> float:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return float(soft) if soft != resource.RLIM_INFINITY else float("inf")
