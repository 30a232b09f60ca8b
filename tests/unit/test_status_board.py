"""The status page's numbers (``runtime.status.StatusBoard``), from in-memory telemetry.

Outcomes are kept apart as on the dashboard: a client that left (``client_closed``) or
a time limit (``timed_out``) is shown and totalled, but is no error (not in the error
rate, not in the list of errors) and no served request (not in the latency quantiles).
No sockets: requests are fed to the telemetry as the serving loop would feed them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from runtime import status
from runtime.lifecycle import Lifecycle
from runtime.status import StatusBoard
from runtime.telemetry import RequestRecord, ServerTelemetry, Telemetry
from runtime.telemetry.metrics import OUTCOMES

#: outcome -> (how many, seconds each): the served requests take 0.4 ms; the clients that
#: left and the time-outs take seconds (a client's patience, a time limit).
FED = {
    "ok": (20, 0.0004),
    "error": (2, 0.0004),
    "rejected": (1, 0.0001),
    "client_closed": (5, 5.0),
    "timed_out": (3, 10.0),
}


class _Server:
    """What binding telemetry needs of a server: its labels and its gauges."""

    server_label = "board"
    transport = "tcp"

    def runtime_stats(self) -> dict[str, float]:
        return {"in_flight": 0}


def _record(outcome: str) -> RequestRecord:
    record = RequestRecord(None, ("127.0.0.1", 40000), 100.0, 1_000_000_000)
    exc: BaseException | None = {
        "error": ValueError("the handler failed"),
        "client_closed": ConnectionResetError(104, "Connection reset by peer"),
        "timed_out": TimeoutError("timed out"),
    }.get(outcome)
    if exc is not None:
        try:
            raise exc
        except type(exc) as raised:
            record.fail("handle", raised)
    if outcome == "rejected":
        record.rejected = "overload"
    elif outcome in ("client_closed", "timed_out"):
        record.ended = outcome
    assert record.outcome == outcome
    return record


def _feed(bound: ServerTelemetry) -> None:
    for outcome, (count, seconds) in FED.items():
        for _ in range(count):
            record = _record(outcome)
            bound.request_finished(record, record.perf + seconds)


def _direct(telemetry: Telemetry) -> StatusBoard:
    return StatusBoard(Lifecycle(), [], telemetry)


def _prefork(telemetry: Telemetry) -> StatusBoard:
    # A pre-fork supervisor's board: no telemetry of its own, the workers' families.
    return StatusBoard(Lifecycle(), [], None, families=telemetry.registry.collect)


BOARDS: dict[str, Callable[[Telemetry], StatusBoard]] = {
    "telemetry": _direct, "pre-fork families": _prefork,
}  # fmt: skip


@pytest.fixture(params=sorted(BOARDS))
def doc(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The status document after FED, sampled once before and read after."""
    telemetry = Telemetry(process_metrics=False)
    bound = telemetry.bind(_Server())  # as the app does: the server first, then the board
    board = BOARDS[request.param](telemetry)  # takes its first sample: nothing yet
    _feed(bound)
    return board.snapshot()


def test_totals_count_every_outcome_apart(doc: dict[str, Any]) -> None:
    counts = {outcome: count for outcome, (count, _) in FED.items()}
    assert doc["totals"] == {
        **counts, "requests": sum(counts.values()), "slow": 0, "watchdog_timed_out": 0,
    }  # fmt: skip


def test_error_rate_counts_only_the_server_s_errors(doc: dict[str, Any]) -> None:
    window = doc["window"]
    assert window["requests"] == sum(count for count, _ in FED.values())
    for outcome in ("error", "rejected", "client_closed", "timed_out"):
        share = window[f"{outcome}_rate"] / window["rate"]
        assert share == pytest.approx(FED[outcome][0] / window["requests"], rel=0.01), outcome


def test_latency_is_that_of_served_requests(doc: dict[str, Any]) -> None:
    """Eight requests of 5 s and 10 s would be the p90 and p99 if they counted (8 in 31)."""
    window = doc["window"]
    assert window["p50_ms"] is not None
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        assert window[q] <= 0.5, (q, window)  # the 0.5 ms bucket's bound


def test_error_list_holds_only_errors() -> None:
    telemetry = Telemetry(process_metrics=False)
    bound = telemetry.bind(_Server())
    board = _direct(telemetry)
    _feed(bound)
    errors = board.snapshot()["errors"]
    assert [e["error_type"] for e in errors] == ["ValueError"] * FED["error"][0]
    assert {e["outcome"] for e in errors} == {"error"}


def test_the_board_knows_every_outcome_of_the_catalogue() -> None:
    assert set(status._OUTCOMES) == set(OUTCOMES)
    assert set(FED) == set(OUTCOMES)
