"""The pre-fork pool's metrics: the supervisor's own dropped log lines reach ``/metrics`` with the
workers', and the pool's own families come from its snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily

from runtime.telemetry.pool import PoolMetrics, PoolSnapshot


def _dropped(families: Any) -> dict[str, float]:
    (family,) = [f for f in families if f.name == "socketserver_telemetry_dropped"]
    return {s.labels["what"]: s.value for s in family.samples if s.name.endswith("_total")}


def _metrics(folder: Path) -> PoolMetrics:
    snapshot = PoolSnapshot(
        label="echo", transport="tcp", state="serving", stats={"in_flight": 2.0},
        workers=[(0, "ready", 0.5), (1, "booting", 0.1)], starts=3, restarts=1,
        exits={"crash": 1},
    )  # fmt: skip
    return PoolMetrics(
        str(folder), "socketserver_", snapshot=lambda: snapshot, pids=list,
        exit_causes=("crash", "shutdown"),
    )  # fmt: skip


def test_before_any_worker_wrote_the_family_the_supervisors_count_is_there(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path)
    metrics.count_dropped("log_lines", 3)
    assert _dropped(metrics.collect()) == {"log_lines": 3}


def test_the_supervisors_count_is_added_to_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = CounterMetricFamily("socketserver_telemetry_dropped", "d", labels=["what"])
    workers.add_metric(["log_lines"], 5)
    workers.add_metric(["spans"], 7)
    from prometheus_client.multiprocess import MultiProcessCollector

    monkeypatch.setattr(MultiProcessCollector, "merge", staticmethod(lambda *a, **k: [workers]))
    metrics = _metrics(tmp_path)
    metrics.count_dropped("log_lines", 3)
    assert _dropped(metrics.collect()) == {"log_lines": 8, "spans": 7}  # one family, summed


def test_the_pools_own_families_show_its_snapshot(tmp_path: Path) -> None:
    body = _metrics(tmp_path).render()[0].decode()
    assert 'socketserver_lifecycle_state{server="echo",state="serving",transport="tcp"} 1.0' in body
    assert 'socketserver_worker_processes{state="ready"} 1.0' in body
    assert 'socketserver_worker_processes{state="booting"} 1.0' in body
    assert 'socketserver_worker_heartbeat_age_seconds{worker="0"} 0.5' in body
    assert "socketserver_worker_starts_total 3.0" in body
    assert 'socketserver_worker_exits_total{cause="crash"} 1.0' in body
    assert 'socketserver_worker_exits_total{cause="shutdown"} 0.0' in body
