"""The pre-fork supervisor's own dropped log lines reach ``/metrics`` with the workers'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily

from runtime import prefork


def _dropped(families: Any) -> dict[str, float]:
    (family,) = [f for f in families if f.name == "socketserver_telemetry_dropped"]
    return {s.labels["what"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_before_any_worker_wrote_the_family_the_supervisors_count_is_there(tmp_path: Path) -> None:
    files = prefork._WorkerFiles(str(tmp_path), "socketserver_", {"log_lines": 3})
    assert _dropped(files.collect()) == {"log_lines": 3}


def test_the_supervisors_count_is_added_to_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = CounterMetricFamily("socketserver_telemetry_dropped", "d", labels=["what"])
    workers.add_metric(["log_lines"], 5)
    workers.add_metric(["spans"], 7)
    from prometheus_client.multiprocess import MultiProcessCollector

    monkeypatch.setattr(MultiProcessCollector, "merge", staticmethod(lambda *a, **k: [workers]))
    files = prefork._WorkerFiles(str(tmp_path), "socketserver_", {"log_lines": 3})
    assert _dropped(files.collect()) == {"log_lines": 8, "spans": 7}  # one family, summed
