"""Socket activation: serve a listening socket the process inherited (``--bind fd://N``, or
systemd's ``LISTEN_FDS``/``LISTEN_PID``), in every mode, binding nothing itself."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _proc import ROOT, echo_line, env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def _start(args: list[str], fds: tuple[int, ...] = (), **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, cwd=ROOT, env={**env(), **extra}, pass_fds=fds,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    return code, proc.stderr.read()


@pytest.mark.parametrize(
    "mode", [["--mode", "thread"], ["--mode", "fork"], ["--mode", "prefork", "--workers", "2"]],
    ids=["thread", "fork", "prefork"],
)  # fmt: skip
def test_an_inherited_listener_is_served(listener: socket.socket, mode: list[str]) -> None:
    fd = listener.fileno()
    proc = _start(
        [sys.executable, "-m", "runtime", "echo", "--bind", f"fd://{fd}", "--admin", "off",
         "--drain-delay", "0", *mode],
        fds=(fd,),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        port = listener.getsockname()[1]
        assert first.strip() == f"serving echo on tcp://127.0.0.1:{port} (inherited, fd://{fd})"
        for i in range(4):  # the pre-fork workers share it too
            assert echo_line(("127.0.0.1", port), b"line %d\n" % i) == b"line %d\n" % i
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    # The socket is the supervisor's to keep: still listening after the runtime left.
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_systemd_listen_fds(listener: socket.socket) -> None:
    """systemd passes fd 3 with LISTEN_FDS=1 and LISTEN_PID=the service's pid (here the shell
    that execs the runtime keeps its pid); no --bind needed; a pre-fork worker serves it."""
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m runtime echo '
         '--admin off --drain-delay 0 --mode prefork --workers 1 3<&0 <&-'],
        cwd=ROOT, env=env(), stdin=listener.fileno(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip().endswith(f":{port} (inherited, fd://3)")
        assert echo_line(("127.0.0.1", port), b"activated\n") == b"activated\n"
    finally:
        code, err = _stop(proc)
    assert code == 0, err


@pytest.fixture
def two_listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    pair = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        pair.append(sock)
    yield pair[0], pair[1]
    for sock in pair:
        sock.close()


def test_systemd_passes_two_sockets(two_listeners: tuple[socket.socket, socket.socket]) -> None:
    """LISTEN_FDS=2: fds 3 and 4 are both served (systemd's ListenStream= twice)."""
    first, second = two_listeners
    # Numbers above 4, so that moving them to 3 and 4 cannot overwrite one with the other; a
    # small Python "systemd" moves them, sets LISTEN_PID to its own pid and execs the runtime.
    fds = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 20) for sock in (first, second)]
    launcher = (
        "import os, sys\n"
        f"os.dup2({fds[0]}, 3); os.dup2({fds[1]}, 4)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'runtime', 'echo', '--admin', 'off',"
        " '--drain-delay', '0', '--mode', 'prefork', '--workers', '1'])\n"
    )
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher], cwd=ROOT, env=env(), pass_fds=fds,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        for fd in fds:
            socket.close(fd)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        ports = [sock.getsockname()[1] for sock in (first, second)]
        assert line == (
            f"serving echo on tcp://127.0.0.1:{ports[0]} (inherited, fd://3), "
            f"tcp://127.0.0.1:{ports[1]} (inherited, fd://4)"
        ), line
        for port in ports:
            assert echo_line(("127.0.0.1", port), b"activated\n") == b"activated\n"
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    for sock in (first, second):  # the supervisor's to keep: still listening
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_a_listen_pid_of_another_process_is_not_ours(listener: socket.socket) -> None:
    """LISTEN_FDS meant for another pid (a parent's, inherited by mistake) is ignored."""
    proc = _start(
        [sys.executable, "-m", "runtime", "--check-config", "echo", "--admin", "off"],
        LISTEN_PID=str(os.getpid()), LISTEN_FDS="1",
    )  # fmt: skip
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "on 127.0.0.1:9000" in out


def test_an_inherited_unix_socket_is_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    with sock:
        proc = _start(
            [sys.executable, "-m", "runtime", "echo", "--bind", f"fd://{sock.fileno()}",
             "--admin", "off", "--drain-delay", "0"],
            fds=(sock.fileno(),),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip().startswith(f"serving echo on unix:{path}")
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                client.sendall(b"unix\n")
                assert client.makefile("rb").readline() == b"unix\n"
        finally:
            code, err = _stop(proc)
        assert code == 0, err
        assert path.exists()  # the supervisor's socket file, not removed


def test_an_inherited_udp_socket_is_served() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    with sock:
        proc = _start(
            [sys.executable, "-m", "runtime", "udp_echo", "--bind", f"fd://{sock.fileno()}",
             "--admin", "off", "--drain-delay", "0"],
            fds=(sock.fileno(),),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("serving udp_echo on udp://127.0.0.1:")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(10)
                client.sendto(b"datagram", sock.getsockname())
                assert client.recvfrom(100)[0] == b"datagram"
        finally:
            code, err = _stop(proc)
        assert code == 0, err


def test_bad_inherited_sockets_are_one_line_and_status_2(listener: socket.socket) -> None:
    idle = socket.socket()  # not listening
    idle.bind(("127.0.0.1", 0))
    with idle:
        cases = [
            (["--bind", "fd://99"], (), {}, "'fd://99': descriptor 99 is not an open socket"),
            (["--bind", "fd://x"], (), {}, "the descriptor must be a number"),
            (["--bind", f"fd://{idle.fileno()}"], (idle.fileno(),), {}, "is not listening"),
            (["--bind", f"fd://{listener.fileno()}", "--mode", "prefork", "--reuse-port"],
             (listener.fileno(),), {}, "--reuse-port: each worker binds its own socket"),
        ]  # fmt: skip
        for args, fds, extra, says in cases:
            proc = _start([sys.executable, "-m", "runtime", "echo", "--admin", "off", *args],
                          fds=fds, **extra)  # fmt: skip
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 2, (args, out, err)
            assert len(err.splitlines()) == 1 and says in err, err
