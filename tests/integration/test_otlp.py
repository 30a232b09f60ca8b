"""Traces configured by the standard OTEL_* variables, exported over OTLP/HTTP to a receiver."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from _proc import RuntimeProcess, connect
from otlp_receiver import OTLPReceiver

from runtime.config import ConfigError, settings_from

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver()
    yield r
    r.close()


def _serve(receiver: OTLPReceiver, mode: str, requests: int, **env: str) -> str:
    base = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "echo-under-test",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    rt = RuntimeProcess(
        "handlers:TracingHandler", "--mode", mode, "--drain-delay", "0",
        extra_env={**base, **env},
    )  # fmt: skip
    try:
        for i in range(requests):
            sock = connect(rt.address)
            sock.sendall(b"line %d\n" % i)
            assert sock.makefile("rb").readline() == b"line %d\n" % i
            sock.close()
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0, err
        return err
    finally:
        rt.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_spans_reach_an_otlp_receiver_with_the_configured_resource(
    receiver: OTLPReceiver, mode: str
) -> None:
    _serve(receiver, mode, 3)
    # Everything was flushed before the process exited: no waiting needed here.
    requests = [s for s in receiver.spans if s.name == "TracingHandler tcp"]
    work = [s for s in receiver.spans if s.name == "echo-work"]
    assert len(requests) == 3 and len(work) == 3
    for span in requests:
        assert span.kind == SERVER_KIND
        assert span.resource["service.name"] == "echo-under-test"
        assert span.resource["deployment.environment"] == "test"
        assert span.resource["service.instance.id"]
        assert span.attributes["network.transport"] == "tcp"
        assert span.attributes["network.peer.address"] == "127.0.0.1"
        assert {"get_request", "handle", "shutdown_request"} <= set(span.events)
    # The handler's own span is a child of its request's span, also from a forked child.
    by_id = {s.span_id: s for s in requests}
    for span in work:
        parent = by_id[span.parent_span_id]
        assert parent.trace_id == span.trace_id
    # One process: one service.instance.id for every span.
    assert len({s.resource["service.instance.id"] for s in receiver.spans}) == 1


@pytest.mark.timeout(60)
def test_sampler_from_the_environment(receiver: OTLPReceiver) -> None:
    _serve(receiver, "thread", 3, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
    assert receiver.spans == []


def test_unknown_exporter_in_the_environment_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert info.value.setting == "OTEL_TRACES_EXPORTER"
    assert settings_from({"OTEL_TRACES_EXPORTER": "otlp"}).traces == "otlp"
    both = {"OTEL_TRACES_EXPORTER": "otlp", "RUNTIME_TRACES": "none"}
    assert settings_from(both).traces == "none"  # the runtime's own setting wins
