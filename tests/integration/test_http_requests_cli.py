"""HTTP requests as the unit, end to end: ``python -m runtime http_hello`` in every mode.

Per mode (sync, thread, fork, pre-fork with sync and threaded workers): requests on one
keep-alive connection, one carrying a caller's ``traceparent``, then a 500 and a 404.
``/metrics`` counts each request by method, status, route and error; a real OTLP receiver
gets one SERVER span per request, the traced one in the caller's trace; stderr has one
access line per request (and no connection line for them).
"""

from __future__ import annotations

import http.client
import json
import signal
from typing import Any

import pytest
from _proc import RuntimeProcess, poll
from otlp_receiver import OTLPReceiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
DURATION = "http_server_request_duration_seconds_count"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def receiver() -> Any:
    r = OTLPReceiver()
    yield r
    r.close()


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> int:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def _run(receiver: OTLPReceiver, args: tuple[str, ...], **env: str) -> tuple[RuntimeProcess, str]:
    base = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "web",
    }
    rt = RuntimeProcess("http_hello", "--drain-delay", "0", *args, extra_env={**base, **env})
    try:
        conn = http.client.HTTPConnection(*rt.address, timeout=10)
        traced = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "User-Agent": "t/1"}
        assert _get(conn, "/", {}) == 200
        assert _get(conn, "/items/41", traced) == 200  # the same keep-alive connection
        assert _get(conn, "/error", {}) == 500  # send_error closes the connection
        assert _get(conn, "/missing", {}) == 404  # http.client opens a new one
        conn.close()
        poll(lambda: rt.metric(DURATION) == 4, what="four HTTP requests on /metrics")
        metrics = {
            key: rt.metric(DURATION, **labels)
            for key, labels in {
                "/ 200": {"http_route": "/", "http_response_status_code": "200", "error_type": ""},
                "items 200": {"http_route": "/items/{id}", "http_response_status_code": "200"},
                "500 error": {"http_response_status_code": "500", "error_type": "500"},
                "404": {"http_response_status_code": "404", "error_type": ""},
            }.items()
        }
        assert metrics == {"/ 200": 1, "items 200": 1, "500 error": 1, "404": 1}
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0, err
        return rt, err
    finally:
        rt.close()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--mode", "sync"), id="sync"),
        pytest.param(("--mode", "thread"), id="thread"),
        pytest.param(("--mode", "fork"), id="fork"),
        pytest.param(("--mode", "prefork", "--workers", "2", "--threads", "0"), id="prefork-sync"),
        pytest.param(
            ("--mode", "prefork", "--workers", "2", "--threads", "4"), id="prefork-threads"
        ),
    ],
)
def test_each_request_is_measured_traced_and_logged(
    receiver: OTLPReceiver, args: tuple[str, ...]
) -> None:
    _, err = _run(receiver, args)
    # Everything was flushed before the process exited.
    spans = [s for s in receiver.spans if "http.request.method" in s.attributes]
    assert sorted(s.name for s in spans) == ["GET", "GET /", "GET /error", "GET /items/{id}"]
    (traced,) = [s for s in spans if s.name == "GET /items/{id}"]
    assert traced.trace_id == CALLER_TRACE and traced.parent_span_id == CALLER_SPAN
    assert traced.attributes["http.route"] == "/items/{id}"
    assert traced.attributes["url.path"] == "/items/41"
    assert traced.attributes["user_agent.original"] == "t/1"
    (failed,) = [s for s in spans if s.attributes.get("http.response.status_code") == 500]
    assert failed.attributes["error.type"] == "500"
    access = [json.loads(line) for line in err.splitlines() if '"event": "request"' in line]
    assert sorted((a["path"], a["status"]) for a in access) == [
        ("/", 200), ("/error", 500), ("/items/41", 200), ("/missing", 404),
    ]  # fmt: skip
    (line,) = [a for a in access if a["path"] == "/items/41"]
    assert line["trace_id"] == CALLER_TRACE and line["route"] == "/items/{id}"
    assert "Traceback" not in err


def test_otel_propagators_is_honoured(receiver: OTLPReceiver) -> None:
    """With OTEL_PROPAGATORS=baggage the W3C traceparent is not read: a trace of its own."""
    _run(receiver, ("--mode", "thread"), OTEL_PROPAGATORS="baggage")
    (span,) = [s for s in receiver.spans if s.name == "GET /items/{id}"]
    assert span.trace_id != CALLER_TRACE and not span.parent_span_id
