"""``--bind`` given more than once: one server listens on each address, with one handler, one
pool and one set of metrics, in every mode; the drain takes and closes every listener."""

from __future__ import annotations

import signal
import socket
import socketserver
import subprocess
import sys
import threading

import pytest
from _proc import ROOT, RuntimeProcess, echo_line, env, poll, refused

import runtime

pytestmark = pytest.mark.timeout(60)

MODES = {
    "sync": ["--mode", "sync"],
    "thread": ["--mode", "thread"],
    "fork": ["--mode", "fork"],
    "prefork": ["--mode", "prefork", "--workers", "2"],
}


@pytest.mark.parametrize("mode", list(MODES.values()), ids=list(MODES))
def test_every_address_is_served_then_drained(mode: list[str]) -> None:
    proc = RuntimeProcess(
        "echo", "-b", "127.0.0.1:0", "--bind", "127.0.0.1:0", "--drain-delay", "1", *mode
    )
    try:
        addresses = proc.addresses
        assert len(addresses) == 2 and addresses[0] != addresses[1], addresses
        assert proc.address == addresses[0]
        for _ in range(3):  # in pre-fork, whichever worker wins takes it, on either address
            for address in addresses:
                assert echo_line(address, b"to %d\n" % address[1]) == b"to %d\n" % address[1]
        poll(
            lambda: proc.metric("socketserver_requests_total", outcome="ok") == 6,
            10, "6 requests counted, 3 on each address",
        )  # fmt: skip
        proc.signal(signal.SIGTERM)
        poll(lambda: proc.get("/readyz")[0] == 503, 5, "/readyz 503 after SIGTERM")
        for address in addresses:  # the drain delay: both still serve
            assert echo_line(address, b"draining\n") == b"draining\n"
        code, err = proc.wait()
        assert code == 0, err
        for address in addresses:
            assert refused(address), f"{address} still accepts after the drain"
    finally:
        proc.close()


def test_the_variable_lists_addresses_with_commas() -> None:
    proc = RuntimeProcess(
        "echo", "--drain-delay", "0", extra_env={"RUNTIME_BIND": "127.0.0.1:0, 127.0.0.1:0"}
    )
    try:
        assert len(proc.addresses) == 2, proc.addresses
        for address in proc.addresses:
            assert echo_line(address, b"env\n") == b"env\n"
    finally:
        proc.signal(signal.SIGTERM)
        code, err = proc.wait()
        assert code == 0, err


def test_ipv4_and_ipv6_on_one_port_number() -> None:
    """``-b 0.0.0.0:N -b [::]:N`` works in either order: each IPv6 listener is IPv6-only."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    finally:
        probe.close()
    with socket.socket() as finder:  # a port free on 127.0.0.1; ::1 is asked to take it too
        finder.bind(("127.0.0.1", 0))
        port = finder.getsockname()[1]
    proc = RuntimeProcess(
        "echo", "--bind", f"[::1]:{port}", "--bind", f"127.0.0.1:{port}", "--drain-delay", "0"
    )
    try:
        assert [a[1] for a in proc.addresses] == [port, port], proc.addresses
        assert echo_line(("::1", port), b"six\n") == b"six\n"
        assert echo_line(("127.0.0.1", port), b"four\n") == b"four\n"
    finally:
        proc.signal(signal.SIGTERM)
        code, err = proc.wait()
        assert code == 0, err


@pytest.mark.parametrize(
    ("args", "variables", "message"),
    [
        (["-b", "udp://127.0.0.1:0", "-b", "udp://127.0.0.1:0"], {},
         "--bind: 'udp://127.0.0.1:0,udp://127.0.0.1:0': a datagram server reads one socket"),
        (["-b", "127.0.0.1:9000", "-b", "unix:/tmp/x.sock"], {},
         "one server serves all tcp or all unix addresses, not both"),
        (["-b", "127.0.0.1:9000", "-b", "127.0.0.1:9000"], {},
         "--bind: '127.0.0.1:9000' is given twice"),
        (["-b", "127.0.0.1:9000", "-b", "127.0.0.1:9001", "--mode", "prefork", "--reuse-port"], {},
         "--reuse-port: each worker binds its own socket"),
        ([], {"RUNTIME_BIND": "127.0.0.1:9000,"}, "RUNTIME_BIND: '127.0.0.1:9000,' has an empty"),
        (["-b", "127.0.0.1:9000", "-b", "127.0.0.1"], {},
         "--bind: '127.0.0.1' is not host:port"),
    ],
    ids=["udp", "tcp-and-unix", "twice", "reuse-port", "empty", "bad-second"],
)  # fmt: skip
def test_addresses_that_cannot_go_together_are_one_line_and_status_2(
    args: list[str], variables: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "--check-config", "echo", *args],
        cwd=ROOT, env={**env(), **variables}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_names_every_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "--check-config", "echo",
         "-b", "127.0.0.1:9000", "-b", "[::1]:9000"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "EchoHandler on 127.0.0.1:9000, [::1]:9000 (" in result.stdout, result.stdout


def test_a_second_address_in_use_is_one_line_and_status_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "runtime", "echo", "--admin", "off",
             "-b", "127.0.0.1:0", "-b", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2, result
    assert result.stderr.strip().startswith(
        f"runtime: error: --bind: 127.0.0.1:{port}: address already in use"
    ), result.stderr


# -- the server's interface ----------------------------------------------------------------------


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_a_drain_takes_what_waits_on_every_listener() -> None:
    """Connections the kernel queued on each listener before the drain are served, not reset."""
    server = runtime.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    extra = socket.create_server(("127.0.0.1", 0))
    server.add_listener(extra)
    addresses = [server.server_address, extra.getsockname()]
    try:
        assert [s.getsockname() for s in server.listeners()] == addresses
        clients = [socket.create_connection(a, timeout=10) for a in addresses]
        for client in clients:
            client.sendall(b"queued\n")
        assert server.accept_backlog() == 2  # nothing served them before: both were queued
        for client in clients:
            assert client.makefile("rb").readline() == b"queued\n"
            client.close()
        assert server.listeners() == []
        for address in addresses:
            assert refused(address)
    finally:
        server.server_close()


def test_serve_forever_accepts_on_an_added_listener() -> None:
    server = runtime.TCPServer(("127.0.0.1", 0), _Echo)
    extra = socket.create_server(("127.0.0.1", 0))
    server.add_listener(extra)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        assert echo_line(extra.getsockname(), b"added\n") == b"added\n"
        assert echo_line(server.server_address, b"own\n") == b"own\n"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert extra.fileno() == -1, "server_close closes the added listener too"


def test_a_server_with_its_own_get_request_serves_one_address() -> None:
    class Custom(runtime.TCPServer):
        def get_request(self) -> tuple[socket.socket, object]:
            return self.socket.accept()

    server = Custom(("127.0.0.1", 0), _Echo)
    extra = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(ValueError, match="has its own get_request"):
            server.add_listener(extra)
        udp = runtime.UDPServer(("127.0.0.1", 0), socketserver.DatagramRequestHandler)
        with udp, pytest.raises(ValueError, match="only a stream server"):
            udp.add_listener(extra)
    finally:
        extra.close()
        server.server_close()
