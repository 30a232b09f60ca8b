"""Lifecycle: the state machine, and the engine's decisions on signals (no processes)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest
from _proc import connect, poll

import runtime
from runtime.lifecycle import TRANSITIONS, InvalidTransition, Lifecycle, Runtime, State
from runtime.telemetry.api import NULL

# -- the state machine, no sockets ------------------------------------------------


def test_transitions_follow_the_table() -> None:
    seen: list[tuple[State, State]] = []
    life = Lifecycle(on_change=lambda old, new, _spent: seen.append((old, new)))
    life.to(State.SERVING)
    life.to(State.DRAINING)
    life.to(State.STOPPED)
    assert seen == [
        (State.STARTING, State.SERVING),
        (State.SERVING, State.DRAINING),
        (State.DRAINING, State.STOPPED),
    ]
    assert TRANSITIONS[State.STOPPED] == frozenset()


def test_invalid_transition_raises() -> None:
    life = Lifecycle()
    life.to(State.SERVING)
    life.to(State.DRAINING)
    with pytest.raises(InvalidTransition):
        life.to(State.SERVING)


def test_ready_only_while_serving_and_live_while_draining() -> None:
    life = Lifecycle()
    assert not life.ready()
    life.to(State.SERVING)
    assert life.ready() and life.live()
    life.stop_requested = True  # what a signal handler does
    assert not life.ready() and life.live()
    life.to(State.DRAINING)
    assert not life.ready() and life.live()


def test_liveness_fails_when_the_heartbeat_is_stale() -> None:
    life = Lifecycle(liveness_timeout=5.0)
    life.to(State.SERVING)
    life.heartbeat_at -= 10.0  # the loop has made no progress for 10 s
    assert not life.live()
    life.heartbeat()
    assert life.live()


class _FakeServer:
    """Just what Runtime.tick touches (the core's public interface): no sockets needed
    to test the decisions."""

    server_label = "fake"
    server_telemetry = NULL

    def __init__(self) -> None:
        self.loop_stopping = False
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1

    def shutdown(self) -> None:  # from the serving thread: asks the loop to stop
        self.loop_stopping = True

    def begin_drain(self) -> None:
        pass


def _runtime(**kw: Any) -> tuple[Runtime, _FakeServer]:
    import structlog

    server = _FakeServer()
    rt = Runtime(server, logger=structlog.get_logger(), handle_signals=False, **kw)
    rt.lifecycle.to(State.SERVING)
    return rt, server


def test_signal_handler_only_records_and_wakes_the_loop() -> None:
    rt, server = _runtime(drain_delay=60)
    rt.handle_signal(signal.SIGTERM)
    assert server.woken == 1
    assert rt.lifecycle.state is State.SERVING  # nothing acted yet...
    assert not rt.lifecycle.ready()  # ...but readiness already fails
    wait = rt.tick()
    assert rt.lifecycle.state is State.DRAINING
    assert wait is not None and 0 < wait <= 60
    assert not server.loop_stopping  # still serving during drain_delay


def test_drain_delay_zero_stops_the_loop_on_the_next_tick() -> None:
    rt, server = _runtime(drain_delay=0)
    rt.stop()
    rt.tick()
    assert server.loop_stopping


def test_second_signal_stops_now() -> None:
    rt, server = _runtime(drain_delay=60)
    rt.handle_signal(signal.SIGINT)
    rt.tick()
    assert not server.loop_stopping
    rt.handle_signal(signal.SIGINT)
    rt.tick()
    assert server.loop_stopping and rt.immediate


def test_sigquit_stops_now() -> None:
    rt, server = _runtime(drain_delay=60)
    rt.handle_signal(signal.SIGQUIT)
    rt.tick()
    assert server.loop_stopping and rt.immediate


class _Holds(runtime.StreamRequestHandler):
    """Answers one line, then holds its connection (no drain hook: it stays in flight)."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())
        self.rfile.read()


@pytest.mark.timeout(60)
def test_a_second_stop_during_the_in_flight_wait_stops_now() -> None:
    # Once the loop had ended the wait for requests in flight heard no signals: a second
    # SIGTERM (or SIGQUIT) waited out the whole graceful timeout.
    server = runtime.ThreadingTCPServer(("127.0.0.1", 0), _Holds)
    rt = Runtime(server, handle_signals=False, drain_delay=0, graceful_timeout=3600)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(rt.run()), daemon=True)
    thread.start()
    poll(rt.lifecycle.ready, what="serving")
    sock = connect(server.server_address)
    try:
        sock.sendall(b"hi\n")
        assert sock.makefile("rb").readline() == b"hi\n"
        rt.stop()
        poll(lambda: server.socket.fileno() == -1, what="the listener closed: the in-flight wait")
        assert rt.lifecycle.state is State.DRAINING
        rt.stop()
        thread.join(30)
        assert status == [1]  # stopped now: the connection in flight was cut (forced)
        assert rt.lifecycle.state is State.STOPPED
    finally:
        sock.close()
