"""Signals and the graceful drain, with real processes (the command, thread and fork modes)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
from _proc import ROOT, RuntimeProcess, connect, env, poll, refused


def _hold(address: tuple[str, int], n: int) -> list[tuple[socket.socket, Any]]:
    clients = []
    for _ in range(n):
        sock = connect(address)
        sock.sendall(b"hold\n")
        clients.append((sock, sock.makefile("rb")))
    for _, reader in clients:
        assert reader.readline() == b"ack\n"  # in flight now
    return clients


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_sigterm_drains_50_requests_in_flight(mode: str) -> None:
    rt = RuntimeProcess(
        "handlers:HoldHandler", "--mode", mode, "--max-children", "64",
        "--drain-delay", "0.3", "--graceful-timeout", "30",
    )  # fmt: skip
    clients: list[tuple[socket.socket, Any]] = []
    try:
        clients = _hold(rt.address, 50)
        assert rt.get("/readyz")[0] == 200
        rt.signal(signal.SIGTERM)
        poll(lambda: rt.get("/readyz")[0] == 503, what="readiness to fail")
        assert rt.get("/livez")[0] == 200  # draining is alive
        poll(lambda: refused(rt.address), what="the listener to close")
        for sock, _ in clients:
            sock.sendall(b"go\n")
        answered = sum(reader.readline() == b"done\n" for _, reader in clients)
        assert answered == 50
        code, err = rt.wait()
        assert code == 0, err
        states = [e["state"] for e in _events(err) if e["event"] == "lifecycle"]
        assert states == ["serving", "draining", "stopped"]
    finally:
        for sock, _ in clients:
            sock.close()
        rt.close()


@pytest.mark.timeout(60)
def test_backlog_queued_in_the_kernel_is_served_not_dropped() -> None:
    # A synchronous server busy with one request cannot accept; four more
    # connections wait in the kernel's backlog when SIGTERM arrives.
    rt = RuntimeProcess("handlers:HoldHandler", "--mode", "sync", "--drain-delay", "0")
    first: list[tuple[socket.socket, Any]] = []
    queued: list[tuple[socket.socket, Any]] = []
    try:
        first = _hold(rt.address, 1)
        for _ in range(4):
            sock = connect(rt.address)
            sock.sendall(b"hold\ngo\n")
            queued.append((sock, sock.makefile("rb")))
        rt.signal(signal.SIGTERM)
        poll(lambda: rt.get("/readyz")[0] == 503, what="readiness to fail at once")
        first[0][0].sendall(b"go\n")
        assert first[0][1].readline() == b"done\n"
        for _, reader in queued:
            assert reader.readline() == b"ack\n"
            assert reader.readline() == b"done\n"
        code, err = rt.wait()
        assert code == 0, err
        closed = [e for e in _events(err) if e["event"] == "listener closed"]
        assert closed[0]["backlog_taken"] == 4
    finally:
        for sock, _ in first + queued:
            sock.close()
        rt.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_graceful_timeout_forces_the_rest_and_exits_1(mode: str) -> None:
    rt = RuntimeProcess(
        "handlers:HoldHandler", "--mode", mode, "--drain-delay", "0", "--graceful-timeout", "0.5"
    )
    clients: list[tuple[socket.socket, Any]] = []
    try:
        clients = _hold(rt.address, 3)
        rt.signal(signal.SIGTERM)
        code, err = rt.wait(timeout=20)
        assert code == 1
        forced = [e for e in _events(err) if e["event"] == "forced requests"]
        assert forced and forced[0]["forced"] == 3
        for _, reader in clients:  # the connections were cut, not left hanging
            assert reader.readline() == b""
    finally:
        for sock, _ in clients:
            sock.close()
        rt.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGQUIT])
def test_second_signal_or_sigquit_stops_at_once(second: int) -> None:
    rt = RuntimeProcess(
        "handlers:HoldHandler", "--drain-delay", "60", "--graceful-timeout", "60"
    )
    clients: list[tuple[socket.socket, Any]] = []
    try:
        clients = _hold(rt.address, 2)
        rt.signal(signal.SIGTERM)
        poll(lambda: rt.state() == "draining", what="the drain to begin")
        rt.signal(second)
        code, err = rt.wait(timeout=15)  # far less than drain delay + graceful timeout
        assert code == 1  # two requests were cut
        assert any(e["event"] == "stopping now" for e in _events(err))
    finally:
        for sock, _ in clients:
            sock.close()
        rt.close()


@pytest.mark.timeout(30)
def test_idle_server_exits_0_on_sigint() -> None:
    rt = RuntimeProcess("echo", "--drain-delay", "0")
    try:
        sock = connect(rt.address)
        sock.sendall(b"ping\n")
        assert sock.makefile("rb").readline() == b"ping\n"
        sock.close()
        rt.signal(signal.SIGINT)
        code, _ = rt.wait()
        assert code == 0
    finally:
        rt.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "args",
    [["--mode", "thread"], ["--mode", "prefork", "--workers", "2"]],
    ids=["thread", "prefork"],
)
def test_a_signal_right_after_the_serving_line_drains(args: list[str]) -> None:
    """The "serving ... on" line is printed once the signal handlers are in place: a
    supervisor (or a script) that sends SIGTERM the moment it reads it gets a drain and
    exit 0, never a process killed by the signal's default action."""
    for _ in range(5):
        rt = RuntimeProcess("echo", "--drain-delay", "0", *args)
        try:
            rt.signal(signal.SIGTERM)  # at once: RuntimeProcess returns after the line
            code, err = rt.wait()
            assert code == 0, f"exit {code}: {err}"
        finally:
            rt.close()


@pytest.mark.parametrize(
    "args",
    [["--mode", "thread"], ["--mode", "fork"], ["--mode", "prefork", "--workers", "2"]],
    ids=["thread", "fork", "prefork"],
)
def test_a_signal_while_starting_up_drains_what_was_queued(
    args: list[str], tmp_path: Any
) -> None:
    """A SIGTERM that arrives while the runtime starts up (here: while it imports the
    handler's module, a socket it inherited already listening with a client queued on
    it) is acted on once the runtime can: the queued client is served, the runtime exits
    0.  Before, the signal's default action killed it and the client was never answered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd = listener.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "slow_start:EchoHandler", "--bind", f"fd://{fd}",
         "--admin", "off", "--drain-delay", "0", *args],
        cwd=ROOT, env={**env(), "SLOW_START_DIR": str(tmp_path)}, pass_fds=(fd,),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = None
    try:
        poll(lambda: (tmp_path / "importing").exists(), what="the handler's module imported")
        client = socket.create_connection(listener.getsockname(), timeout=15)
        client.sendall(b"queued before serving\n")  # in the kernel's queue: nobody accepts yet
        proc.send_signal(signal.SIGTERM)
        (tmp_path / "go").touch()
        assert client.makefile("rb").readline() == b"queued before serving\n"
        client.close()
        code = proc.wait(30)
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        listener.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert code == 0, f"exit {code}: {err}"
    assert '"drain started"' in err and '"SIGTERM"' in err, err
