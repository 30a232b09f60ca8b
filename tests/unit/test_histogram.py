"""The per-thread histogram reports what prometheus-client's would."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram

from runtime.telemetry.histogram import FastHistogram
from runtime.telemetry.metrics import LATENCY_BUCKETS


def _samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    )


def test_same_samples_as_prometheus_client_across_threads_that_come_and_go() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("h", "Doc.", ["k"], buckets=LATENCY_BUCKETS, registry=ours)
    slow = Histogram("h", "Doc.", ["k"], buckets=LATENCY_BUCKETS, registry=theirs)
    values = [0.00001, 0.00005, 0.0003, 0.001, 0.01, 0.5, 1.0, 7.0, 10.0, 11.0, 1e9]

    def work(label: str) -> None:
        for v in values:
            fast.labels(label).observe(v)
            slow.labels(label).observe(v)

    for round_ in range(3):  # threads end between scrapes: their counts stay
        threads = [threading.Thread(target=work, args=(f"l{i % 2}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        work("main")
        a, b = _samples(ours), _samples(theirs)
        assert [x[:2] for x in a] == [x[:2] for x in b], round_
        # Counts exactly; sums up to float addition order.
        assert [x[2] for x in a] == pytest.approx([x[2] for x in b], rel=1e-12), round_
    child = fast.labels("l0")
    assert len(child._shards) <= 1  # ended threads were folded in (the main thread remains)


def test_exemplars_are_kept_per_bucket() -> None:
    registry = CollectorRegistry()
    fast = FastHistogram("h", "Doc.", ["k"], buckets=(0.1, 1.0), registry=registry)
    fast.labels("a").observe(0.05, {"trace_id": "t1"})
    fast.labels("a").observe(0.5, {"trace_id": "t2"})
    fast.labels("a").observe(0.06)
    buckets = {s.labels["le"]: s for f in registry.collect() for s in f.samples
               if s.name == "h_bucket"}  # fmt: skip
    assert buckets["0.1"].exemplar.labels == {"trace_id": "t1"}
    assert buckets["0.1"].value == 2
    assert buckets["1.0"].exemplar.labels == {"trace_id": "t2"}
    assert buckets["+Inf"].exemplar is None and buckets["+Inf"].value == 3
