"""The fast /metrics renderer writes exactly what prometheus-client writes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

import runtime
from runtime.telemetry.exposition import render

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _populated() -> CollectorRegistry:
    telemetry = runtime.Telemetry()
    registry = telemetry.registry
    # Every family of the runtime, with exemplars on some observations.
    server = runtime.ThreadingTCPServer(
        ("127.0.0.1", 0), runtime.StreamRequestHandler,
        telemetry=telemetry, server_name='we"ird\\name\n',
    )  # fmt: skip
    try:
        bound = server.server_telemetry
        for hook in ("get_request", "handle", "finish"):
            bound.hook(hook, 0.0003)
        record = runtime.RequestRecord(None, ("127.0.0.1", 1), 0.0, 0)
        record.exemplar = {"trace_id": "a" * 32, "span_id": "b" * 16}
        bound.hook("handle", 0.02, record)
        bound.request_finished(record, 0.5)
        bound.error("handle", "ValueError")
        bound.rejected("overload")
        bound.queue_wait(0.001)
    finally:
        server.server_close()
    # Kinds the runtime does not use itself, but a user's collector might.
    Summary("user_summary", "A summary.", registry=registry).observe(3)
    Info("user_build", "Build info.", registry=registry).info({"commit": "abc"})
    Enum("user_state", "A state.", states=["a", "b"], registry=registry).state("b")
    Gauge("user_bytes", "With a unit.", unit="bytes", registry=registry).set(1e21)
    Counter("user_events", "Multi\nline \\ doc.", ["k"], registry=registry).labels("v").inc(2)
    Histogram("user_latency", "Seconds.", registry=registry).observe(float("inf"))
    return registry


def test_text_is_prometheus_client_s() -> None:
    registry = _populated()
    body, content_type = render(registry, "")
    assert content_type.startswith("text/plain")
    # Process metrics move between two renders; compare the rest.
    ours = [x for x in body.decode().splitlines() if "process_" not in x]
    theirs = [x for x in generate_latest(registry).decode().splitlines() if "process_" not in x]
    assert ours == theirs


def test_openmetrics_is_prometheus_client_s_with_exemplars() -> None:
    registry = _populated()
    body, content_type = render(registry, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    ours = [x for x in body.decode().splitlines() if "process_" not in x]
    theirs = generate_openmetrics(registry).decode().splitlines()
    theirs = [x for x in theirs if "process_" not in x]
    assert ours == theirs
    assert any('# {span_id="' in line for line in ours)
    assert ours[-1] == "# EOF"


@pytest.mark.parametrize("accept", ["", OPENMETRICS])
def test_what_it_cannot_render_the_same_goes_to_prometheus_client(accept: str) -> None:
    registry = CollectorRegistry()
    Gauge("fine", "A gauge.", registry=registry).set(1)

    class Stamped:
        def collect(self):  # type: ignore[no-untyped-def]
            from prometheus_client.core import GaugeMetricFamily

            family = GaugeMetricFamily("stamped", "With a timestamp.")
            family.add_metric([], 1.0, timestamp=1234.5)
            yield family

    registry.register(Stamped())  # type: ignore[arg-type]
    body, _ = render(registry, accept)
    expected = generate_openmetrics(registry) if accept else generate_latest(registry)
    assert body == expected
