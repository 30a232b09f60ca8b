"""Issue 10's bad days, measured: each fault against a checkout of the runtime, and what happened.

    python bench/faults.py                       # every scenario, against this checkout
    python bench/faults.py --root /tmp/old slowloris emfile   # some, against another checkout

``--root`` points at a checkout (its ``runtime`` package is the one run, as
``python -m runtime`` from that folder), so the same command measures the code
before and after a change: check the old commit out elsewhere (``git worktree
add /tmp/old <commit>``) and run both.  Everything runs on 127.0.0.1, bounded in
time and traffic; only processes this script started are stopped.  Each
scenario prints one line of ``name: key=value ...``; nothing is asserted (the
tests assert the behaviour; this says how much).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent.parent


class Server:
    """``python -m runtime ARGS`` from *root*, its addresses read from stdout; stderr as given."""

    def __init__(
        self,
        root: Path,
        *args: str,
        stderr: int | IO[Any] = subprocess.PIPE,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_", "OTEL_"))}
        environ.update(env or {})
        environ["PYTHONPATH"] = os.pathsep.join([str(root), str(HERE / "tests")])
        cmd = [sys.executable, "-m", "runtime", *args, "--bind", "127.0.0.1:0",
               "--admin", "127.0.0.1:0"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=root, env=environ, stdout=subprocess.PIPE, stderr=stderr, text=True,
            preexec_fn=preexec,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first, second = self.proc.stdout.readline(), self.proc.stdout.readline()
        found = re.search(r"on tcp://([\d.]+):(\d+)", first)
        admin = re.search(r"admin (http://[\d.]+:\d+)/", second)
        if not found or not admin:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {first!r} {second!r}")
        self.address = (found.group(1), int(found.group(2)))
        self.admin = admin.group(1)
        self.err: list[str] = []
        if stderr == subprocess.PIPE:
            threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=timeout) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()
        except OSError:
            return 0, ""

    def metric(self, prefix: str) -> float:
        _, text = self.get("/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the server never got ready")
            time.sleep(0.05)

    def stop(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if still running after *timeout*, seconds)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, round(time.monotonic() - started, 2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _echo_once(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(b"hi\n")
            return sock.makefile("rb").readline() == b"hi\n"
    except OSError:
        return False


# -- the scenarios ---------------------------------------------------------------------------


def stuck_log(root: Path) -> str:
    """stderr a pipe nobody reads, access log on: requests answered? probes true? SIGTERM obeyed?"""
    read_end, write_end = os.pipe()
    server = Server(root, "echo", "--drain-delay", "0", stderr=write_end)
    os.close(write_end)
    try:
        answered = 0
        for _ in range(3000):
            if not _echo_once(server.address, timeout=5.0):
                break
            answered += 1
        livez = server.get("/livez")[0]
        code, seconds = server.stop(15.0)
        return f"answered={answered}/3000 livez={livez} sigterm_exit={code} seconds={seconds}"
    finally:
        server.kill()
        os.close(read_end)


def idle_keepalive(root: Path) -> str:
    """20 idle and 8 active HTTP/1.1 keep-alive clients, then SIGTERM (drain delay 1, grace 20)."""
    server = Server(root, "http_hello", "--drain-delay", "1", "--graceful-timeout", "20")
    idle, told, stop = [], Counter[str](), threading.Event()

    def active() -> None:
        conn = http.client.HTTPConnection(*server.address, timeout=30)
        try:
            while not stop.is_set():
                conn.request("GET", "/")
                reply = conn.getresponse()
                reply.read()
                if reply.getheader("Connection") == "close":
                    told["close"] += 1
                    return
        except (OSError, http.client.HTTPException) as exc:  # cut by a forced drain
            told[type(exc).__name__] += 1

    try:
        server.wait_ready()
        for _ in range(20):
            conn = http.client.HTTPConnection(*server.address, timeout=30)
            conn.request("GET", "/")
            conn.getresponse().read()
            idle.append(conn)
        threads = [threading.Thread(target=active) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the clients are at it
        code, seconds = server.stop(60.0)
        stop.set()
        for t in threads:
            t.join(10)
        forced = "".join(server.err).count('"forced requests"')
        return f"exit={code} seconds={seconds} told_close={told['close']}/8 forced_lines={forced}"
    finally:
        server.kill()


def hung_collector(root: Path) -> str:
    """Traces to a collector that accepts and never answers: how long does SIGTERM take?"""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=hold, daemon=True).start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4", "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
    server = Server(root, "echo", "--traces", "otlp", "--drain-delay", "0", env=env)
    try:
        for _ in range(40):
            _echo_once(server.address, timeout=5.0)
        code, seconds = server.stop(150.0)
        return f"sigterm_exit={code} seconds={seconds}"
    finally:
        server.kill()
        silent.close()
        for sock in held:
            sock.close()


def admin_idle(root: Path) -> str:
    """200 idle connections held to the admin port: are 30 probes (2 s each) answered?"""
    server = Server(root, "echo")
    host, port = server.admin[len("http://") :].split(":")
    peers: list[socket.socket] = []
    try:
        for _ in range(200):
            peers.append(socket.create_connection((host, int(port)), timeout=5))
        times = []
        for _ in range(30):
            started = time.monotonic()
            if server.get("/livez", timeout=2.0)[0] == 200:
                times.append(time.monotonic() - started)
        times.sort()
        p99 = f"{times[int(len(times) * 0.99) - 1] * 1000:.2f}ms" if times else "-"
        return f"probes_answered={len(times)}/30 p99={p99}"
    finally:
        for sock in peers:
            sock.close()
        server.kill()


def emfile(root: Path) -> str:
    """RLIMIT_NOFILE 64, 100 clients holding connections: CPU burnt and accepts failed meanwhile."""

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    server = Server(root, "echo", "--no-access-log", "--drain-delay", "0", preexec=low)
    clients: list[socket.socket] = []
    try:
        server.wait_ready()
        for _ in range(100):
            sock = socket.create_connection(server.address, timeout=10)
            sock.sendall(b"hi\n")
            clients.append(sock)
        time.sleep(1.0)  # exhausted by now
        cpu = _cpu(server.proc.pid)
        time.sleep(2.0)  # the window measured
        used = _cpu(server.proc.pid) - cpu
        for sock in clients:
            sock.close()
        clients.clear()
        deadline = time.monotonic() + 10
        while not _echo_once(server.address, 2.0) and time.monotonic() < deadline:
            pass
        failed = server.metric('socketserver_errors_total{error_type="OSError",hook="get_request"')
        lines = sum("accept failing" in line for line in server.err)
        return f"cpu_seconds_in_2s={used:.2f} failed_accepts={failed:.0f} log_lines={lines}"
    finally:
        for sock in clients:
            sock.close()
        server.kill()


def slowloris(root: Path) -> str:
    """200 clients trickle a request head (a byte every 5 s) against the defaults; 5 normal GETs."""
    server = Server(root, "http_hello", "--no-access-log")
    slow: list[socket.socket] = []
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(5.0):
            for sock in list(slow):
                try:
                    sock.send(b"x")
                except OSError:
                    pass

    try:
        server.wait_ready()
        for _ in range(200):
            sock = socket.create_connection(server.address, timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.0)  # all taken
        answered = 0
        for _ in range(5):
            conn = http.client.HTTPConnection(*server.address, timeout=1.0)
            try:
                conn.request("GET", "/")
                answered += conn.getresponse().status == 200
            except OSError:
                pass
            finally:
                conn.close()
        livez = server.get("/livez")[0]
        return f"normal_answered_within_1s={answered}/5 livez={livez}"
    finally:
        stop.set()
        for sock in slow:
            sock.close()
        server.kill()


def client_reset(root: Path) -> str:
    """20 clients send 1 MiB of lines to the echo server and reset without reading the replies."""
    server = Server(root, "echo", "--drain-delay", "0")
    try:
        server.wait_ready()
        for _ in range(20):
            sock = socket.create_connection(server.address, timeout=10)
            try:
                for _ in range(1024):
                    sock.sendall(b"x" * 1023 + b"\n")
            except OSError:
                pass
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(1.0)  # the server notices
        outcomes = {
            name: int(server.metric(f'socketserver_requests_total{{outcome="{name}"'))
            for name in ("ok", "error", "client_closed")
        }
        tracebacks = "".join(server.err).count('"exception"')
        return f"outcomes={json.dumps(outcomes)} error_lines_with_traceback={tracebacks}"
    finally:
        server.kill()


def reuse_port(root: Path, kind: str) -> str:
    args = ["echo", "--mode", "prefork", "--workers", "2", "--reuse-port", "--drain-delay", "0",
            "--no-access-log"]  # fmt: skip
    if kind == "recycle":
        args += ["--max-requests", "300"]
    server = Server(root, *args)
    failures: Counter[str] = Counter()
    served = [0]
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(server.address, timeout=5) as sock:
                    sock.sendall(b"hi\n")
                    ok = sock.makefile("rb").readline() == b"hi\n"
                    served[0] += ok
                    failures["no answer"] += not ok
            except OSError as exc:
                failures[type(exc).__name__] += 1

    try:
        server.wait_ready()
        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        kills = 0
        for _ in range(8):
            time.sleep(1.0)
            if kind == "kill":
                pids = [json.loads(x)["pid"] for x in server.err
                        if '"worker ready"' in x and x.startswith("{")]  # fmt: skip
                try:
                    os.kill(pids[-1], signal.SIGKILL)
                    kills += 1
                except (IndexError, ProcessLookupError):
                    pass
        stop.set()
        for t in threads:
            t.join(10)
        recycles = sum('"worker recycling"' in x for x in server.err)
        lost = sum(failures.values())
        return (f"served={served[0]} lost={lost} {dict(failures)} recycles={recycles} "
                f"kills={kills}")  # fmt: skip
    finally:
        server.kill()


def stop_while_booting(root: Path) -> str:
    """SIGTERM to a pre-fork pool while it replaces recycled workers, 20 rounds, every CPU kept
    busy: how many stops waited for a worker that missed the signal (killed after the grace)?"""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 1)]  # fmt: skip
    took: list[float] = []
    codes: Counter[int | None] = Counter()
    try:
        for _ in range(20):
            server = Server(root, "echo", "--mode", "prefork", "--workers", "2", "--reuse-port",
                            "--max-requests", "200", "--drain-delay", "0", "--graceful-timeout",
                            "5", "--no-access-log")  # fmt: skip
            stop = threading.Event()

            def load(address: tuple[str, int] = server.address, done: Any = stop) -> None:
                while not done.is_set():
                    _echo_once(address, 5.0)

            try:
                server.wait_ready()
                threads = [threading.Thread(target=load) for _ in range(6)]
                for t in threads:
                    t.start()
                deadline = time.monotonic() + 30
                while sum('"worker recycling"' in x for x in server.err) < 8:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                stop.set()
                for t in threads:
                    t.join(10)
                code, seconds = server.stop(30)
                codes[code] += 1
                took.append(seconds)
            finally:
                stop.set()
                server.kill()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    slow = sum(1 for t in took if t > 3.0)
    return f"rounds={len(took)} slow_stops={slow} max_s={max(took)} exits={dict(codes)}"


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SCENARIOS: dict[str, Callable[[Path], str]] = {
    "stuck-log": stuck_log,
    "idle-keepalive": idle_keepalive,
    "hung-collector": hung_collector,
    "admin-idle": admin_idle,
    "emfile": emfile,
    "slowloris": slowloris,
    "client-reset": client_reset,
    "reuse-port-recycle": lambda root: reuse_port(root, "recycle"),
    "reuse-port-kill": lambda root: reuse_port(root, "kill"),
    "stop-while-booting": stop_while_booting,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"some of: {', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to run")
    args = parser.parse_args()
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    for name in args.scenarios or list(SCENARIOS):
        print(f"{name}: {SCENARIOS[name](args.root.resolve())}", flush=True)


if __name__ == "__main__":
    main()
