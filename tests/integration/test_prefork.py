"""The pre-fork pool, run as ``python -m runtime --mode prefork`` and driven with real signals.

Each test starts its own supervisor on 127.0.0.1 with ephemeral ports, crashes,
hangs, floods, reloads or drains it, and checks what a user relies on: the
replies, the exit status, /metrics summed over the workers, and the logs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _proc import RuntimeProcess, poll

FAST = ["--drain-delay", "0.3", "--graceful-timeout", "10", "--poll-interval", "0.1",
        "--log-format", "json", "--access-log"]  # fmt: skip


def ask(address: tuple[str, int], line: bytes = b"hi", timeout: float = 10) -> bytes:
    """One request on its own connection; the whole reply."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(line + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def hold(address: tuple[str, int]) -> socket.socket:
    """A HoldHandler request, acknowledged (so in flight in some worker)."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"hold\n")
    assert sock.makefile("rb").readline() == b"ack\n"
    return sock


def release(sock: socket.socket) -> bytes:
    with sock:
        sock.sendall(b"go\n")
        return sock.makefile("rb").readline()


def log_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.fixture
def started() -> Iterator[list[RuntimeProcess]]:
    """Processes a test started; killed (with their workers) if the test did not stop them."""
    procs: list[RuntimeProcess] = []
    yield procs
    for rt in procs:
        if rt.proc.poll() is None:
            rt.signal(signal.SIGQUIT)
            try:
                rt.proc.wait(timeout=10)
            except Exception:
                rt.close()
        rt.close()


def prefork(started: list[RuntimeProcess], *args: str, **env: str) -> RuntimeProcess:
    rt = RuntimeProcess("--mode", "prefork", *FAST, *args, extra_env=env)
    started.append(rt)
    poll(rt.ready, what="the pool to be ready")
    return rt


def ready_workers(rt: RuntimeProcess) -> float:
    return rt.metric("socketserver_worker_processes", state="ready")


def test_workers_serve_together_and_metrics_are_summed(started: list[RuntimeProcess]) -> None:
    rt = prefork(started, "handlers:HoldHandler", "--workers", "2")
    poll(lambda: ready_workers(rt) == 2, what="two workers ready")
    # Two held requests: a sync worker takes one at a time, so both workers are busy.
    held = [hold(rt.address), hold(rt.address)]
    assert rt.metric("socketserver_requests_in_flight") == 2
    assert rt.metric("socketserver_workers", state="busy") == 2
    assert rt.metric("socketserver_workers_max") == 2
    assert [release(s) for s in held] == [b"done\n", b"done\n"]
    for _ in range(6):
        with socket.create_connection(rt.address, timeout=10) as sock:
            sock.sendall(b"nothing\n")
            sock.shutdown(socket.SHUT_WR)
            sock.recv(10)
    poll(lambda: rt.metric("socketserver_requests_total", outcome="ok") == 8,
         what="8 requests counted over both workers")  # fmt: skip
    poll(lambda: rt.metric("socketserver_request_duration_seconds_count") == 8,
         what="8 durations observed")  # (observed just after the count)
    assert rt.metric("socketserver_hook_duration_seconds_count", hook="handle") == 8
    assert rt.metric("process_children") == 2
    rt.signal(signal.SIGTERM)
    code, err = rt.wait()
    assert code == 0, err
    lines = log_lines(err)
    access = [x for x in lines if x.get("event") == "request"]
    assert len(access) == 8
    assert {x["worker"] for x in access} == {0, 1}  # every line carries its worker
    assert {x["pid"] for x in lines if x.get("event") == "worker started"} == {
        x["pid"] for x in lines if x.get("event") == "worker stopped"
    }


def test_sigkilled_worker_is_replaced_and_counters_keep_counting(
    started: list[RuntimeProcess],
) -> None:
    rt = prefork(started, "handlers:PidHandler", "--workers", "2")
    poll(lambda: ready_workers(rt) == 2, what="two workers ready")
    pids = {int(ask(rt.address)) for _ in range(20)}
    # (a client has its reply before the worker counts the request: wait for the count)
    poll(lambda: rt.metric("socketserver_requests_total") == 20, what="20 counted")
    before = 20
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    poll(lambda: rt.metric("socketserver_worker_exits_total", cause="crash") == 1,
         what="the crash to be counted")  # fmt: skip
    poll(lambda: ready_workers(rt) == 2, what="a replacement")
    assert rt.metric("socketserver_worker_restarts_total") == 1
    assert rt.metric("socketserver_worker_starts_total") == 3
    assert rt.ready()
    # The dead worker's counts stay: totals never go down.
    assert rt.metric("socketserver_requests_total") == before
    replies = {int(ask(rt.address)) for _ in range(20)}
    assert victim not in replies
    poll(lambda: rt.metric("socketserver_requests_total") == before + 20, what="20 more")
    rt.signal(signal.SIGTERM)
    code, err = rt.wait()
    assert code == 0, err
    died = [x for x in log_lines(err) if x.get("event") == "worker died"]
    assert died and died[0]["pid"] == victim and died[0]["exit"] == "signal SIGKILL"


def test_hung_worker_is_aborted_with_its_stack_and_replaced(started: list[RuntimeProcess]) -> None:
    rt = prefork(started, "handlers:PidHandler", "--workers", "2", "--worker-timeout", "1")
    poll(lambda: ready_workers(rt) == 2, what="two workers ready")
    hung = socket.create_connection(rt.address, timeout=10)
    hung.sendall(b"hang\n")
    poll(lambda: rt.metric("socketserver_worker_exits_total", cause="timeout") == 1, timeout=15,
         what="the hung worker to be aborted")  # fmt: skip
    assert hung.recv(10) == b""  # its connection died with it
    hung.close()
    poll(lambda: ready_workers(rt) == 2, what="a replacement")
    assert int(ask(rt.address)) > 0  # still serving
    rt.signal(signal.SIGTERM)
    code, err = rt.wait()
    assert code == 0, err
    aborted = [x for x in log_lines(err) if x.get("event") == "worker aborted"]
    assert len(aborted) == 1
    stack = str(aborted[0]["stack"])
    assert "hang_forever" in stack and "handlers.py" in stack  # where it hung
    assert aborted[0]["exit"] == "signal SIGABRT"


def test_max_requests_recycles_workers_with_bounded_storage(started: list[RuntimeProcess]) -> None:
    rt = prefork(started, "handlers:PidHandler", "--workers", "2", "--max-requests", "5",
                 "--max-requests-jitter", "2")  # fmt: skip
    seen = set()
    for _ in range(100):
        seen.add(int(ask(rt.address)))  # every request answered, across recycles
    poll(lambda: rt.metric("socketserver_requests_total") == 100, what="100 requests counted")
    recycled = rt.metric("socketserver_worker_exits_total", cause="max_requests")
    assert recycled >= 100 // 7 - 2
    assert len(seen) >= recycled
    restarts = rt.metric("socketserver_worker_restarts_total")
    trouble = [x for x in log_lines("".join(rt.stderr_lines()))
               if x.get("level") in ("error", "warning")]  # fmt: skip
    assert restarts == 0, trouble  # recycling is not a failure
    rt.signal(signal.SIGTERM)
    code, err = rt.wait()
    assert code == 0, err
    (start,) = [x for x in log_lines(err) if x.get("event") == "prefork"]
    assert not Path(str(start["metrics_dir"])).exists()  # wiped at exit


def test_metric_files_are_per_slot_not_per_worker_ever_started(
    started: list[RuntimeProcess],
) -> None:
    rt = prefork(started, "handlers:PidHandler", "--workers", "2", "--max-requests", "3")
    (start,) = [x for x in log_lines("".join(rt.stderr_lines())) if x.get("event") == "prefork"]
    folder = Path(str(start["metrics_dir"]))
    for _ in range(300):
        ask(rt.address)
    poll(lambda: rt.metric("socketserver_worker_exits_total", cause="max_requests") >= 95,
         what="a hundred recycles")  # fmt: skip
    files = sorted(p.name for p in folder.iterdir())
    # Files are named by slot (w0, w1, plus w2/w3 while a replacement overlaps), never by pid.
    slots = {name.rsplit("_", 1)[1] for name in files}
    assert slots <= {"w0.db", "w1.db", "w2.db", "w3.db"}, files
    assert rt.metric("socketserver_requests_total") == 300


def test_ttin_ttou_scale_the_pool(started: list[RuntimeProcess]) -> None:
    rt = prefork(started, "handlers:PidHandler", "--workers", "2", "--max-children", "3")
    poll(lambda: ready_workers(rt) == 2, what="two workers")
    rt.signal(signal.SIGTTIN)
    poll(lambda: ready_workers(rt) == 3, what="three workers")
    rt.signal(signal.SIGTTIN)  # max_children 3: stays at 3

    def ttin_seen() -> int:
        lines = log_lines("".join(rt.stderr_lines()))
        return sum(1 for x in lines if x.get("event") == "workers" and x["signal"] == "SIGTTIN")

    # Signals sent back to back may be handled out of order (any thread of the
    # supervisor may take one): send the next once this one was acted on.
    poll(lambda: ttin_seen() == 2, what="the second SIGTTIN handled")
    assert ready_workers(rt) == 3
    rt.signal(signal.SIGTTOU)
    try:
        poll(lambda: ready_workers(rt) == 2, what="back to two")
    except AssertionError:  # say what the supervisor did
        events = [x for x in log_lines("".join(rt.stderr_lines())) if "worker" in str(x)]
        raise AssertionError(f"not back to two: {events}") from None
    # (not ready once told to stop; counted once reaped)
    poll(lambda: rt.metric("socketserver_worker_exits_total", cause="scale_down") == 1,
         what="the scaled-down worker reaped")  # fmt: skip
    assert rt.metric("socketserver_worker_starts_total") == 3


def _write_module(folder: Path, name: str, reply: str, fail: bool = False) -> None:
    body = [
        "import socketserver",
        "if " + str(fail) + ":",
        "    raise ImportError('this version cannot be imported')",
        "class Handler(socketserver.StreamRequestHandler):",
        "    def handle(self):",
        "        self.rfile.readline()",
        f"        self.wfile.write(b'{reply}\\n')",
    ]
    (folder / f"{name}.py").write_text("\n".join(body) + "\n")


def test_sighup_reloads_the_handler_under_load_without_failing_a_request(
    started: list[RuntimeProcess], tmp_path: Path
) -> None:
    _write_module(tmp_path, "reloadable", "v1")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    rt = prefork(started, "reloadable:Handler", "--workers", "2", **env)
    poll(lambda: ready_workers(rt) == 2, what="both workers up on v1")
    assert ask(rt.address) == b"v1\n"
    replies: list[bytes] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                replies.append(ask(rt.address))
            except OSError as exc:
                failures.append(exc)

    client = threading.Thread(target=load)
    client.start()
    try:
        _write_module(tmp_path, "reloadable", "v2")
        rt.signal(signal.SIGHUP)
        poll(lambda: bool(replies) and replies[-1] == b"v2\n", what="the new code to answer")
        poll(lambda: rt.metric("socketserver_worker_exits_total", cause="reload") == 2,
             what="both old workers to leave")  # fmt: skip
        count = len(replies)
        poll(lambda: len(replies) > count + 20, what="more requests after the reload")
    finally:
        stop.set()
        client.join(10)
    assert failures == []
    assert set(replies) == {b"v1\n", b"v2\n"}
    assert replies[-20:] == [b"v2\n"] * 20
    assert ready_workers(rt) == 2


def test_a_reload_that_cannot_boot_keeps_the_running_workers(
    started: list[RuntimeProcess], tmp_path: Path
) -> None:
    _write_module(tmp_path, "breakable", "v1")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    rt = prefork(started, "breakable:Handler", "--workers", "2", **env)
    # Both on the old code first: a worker still booting would import the broken module and
    # fail before the reload, and the reload's count of failures would start after it.
    poll(lambda: ready_workers(rt) == 2, what="both workers up on v1")
    _write_module(tmp_path, "breakable", "v2", fail=True)
    rt.signal(signal.SIGHUP)
    poll(lambda: rt.metric("socketserver_worker_exits_total", cause="boot_failure") >= 5,
         timeout=30, what="five failed boots, backing off")  # fmt: skip
    assert rt.ready()
    assert {ask(rt.address) for _ in range(10)} == {b"v1\n"}
    assert rt.metric("socketserver_worker_exits_total", cause="reload") == 0
    rt.signal(signal.SIGTERM)
    code, err = rt.wait()
    assert code == 0, err
    assert any(x.get("event", "").startswith("reload failed") for x in log_lines(err))  # type: ignore[union-attr]


def test_workers_that_never_boot_end_the_runtime_with_a_clear_message(tmp_path: Path) -> None:
    # Imports in the supervisor (which checks the handler), fails in every worker.
    (tmp_path / "onlyonce.py").write_text(
        "import os, pathlib, socketserver\n"
        "marker = pathlib.Path(os.environ['MARKER'])\n"
        "if marker.exists():\n"
        "    raise RuntimeError('database unreachable')\n"
        "marker.touch()\n"
        "class Handler(socketserver.StreamRequestHandler):\n"
        "    def handle(self): pass\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
           "MARKER": str(tmp_path / "imported")}  # fmt: skip
    rt = RuntimeProcess("--mode", "prefork", "onlyonce:Handler", "--workers", "2", *FAST,
                        extra_env=env)  # fmt: skip
    try:
        code, err = rt.wait(timeout=60)
    finally:
        rt.close()
    assert code == 3
    lines = log_lines(err)
    gave_up = [x for x in lines if "giving up" in str(x.get("event"))]
    assert len(gave_up) == 1 and "database unreachable" in str(gave_up[0]["error"])
    # Backed off: a handful of attempts, not a fork bomb.
    attempts = [x for x in lines if x.get("event") == "worker started"]
    assert 5 <= len(attempts) <= 8


def test_graceful_shutdown_finishes_requests_in_flight_in_every_worker(
    started: list[RuntimeProcess],
) -> None:
    rt = prefork(started, "handlers:HoldHandler", "--workers", "2", "--threads", "3")
    poll(lambda: ready_workers(rt) == 2, what="two workers")
    held = [hold(rt.address) for _ in range(6)]
    clients = {"{}:{}".format(*s.getsockname()[:2]) for s in held}
    poll(lambda: rt.metric("socketserver_requests_in_flight") == 6, what="six in flight")
    rt.signal(signal.SIGTERM)
    poll(lambda: not rt.ready(), timeout=2, what="readiness to fail at once")
    assert rt.get("/livez")[0] == 200
    poll(lambda: _refused(rt.address), what="the listener to close after the drain delay")
    assert [release(s) for s in held] == [b"done\n"] * 6  # none lost
    code, err = rt.wait()
    assert code == 0, err
    lines = log_lines(err)
    # (The probes above were served too while the drain delay ran.)
    access = {x["client"]: x for x in lines if x.get("event") == "request"}
    assert all(access[c]["outcome"] == "ok" for c in clients)
    assert {x["cause"] for x in lines if x.get("event") == "worker stopped"} == {"shutdown"}


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "prefork", "--workers", "0"], "--workers: must be at least 1"),
        (["--workers", "2"], "--workers: applies to --mode prefork only"),
        (["--mode", "prefork", "--workers", "4", "--max-children", "2"], "--max-children"),
        (["--mode", "prefork", "--max-requests", "-1"], "--max-requests: must be at least 0"),
    ],
)
def test_bad_prefork_settings_get_one_line_and_status_2(args: list[str], message: str) -> None:
    import subprocess

    from _proc import ROOT, env

    done = subprocess.run(
        [sys.executable, "-m", "runtime", *args, "--bind", "127.0.0.1:0", "--admin", "off"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr


def test_udp_prefork(started: list[RuntimeProcess]) -> None:
    rt = RuntimeProcess("udp_echo", "--mode", "prefork", "--workers", "2", *FAST,
                        "--bind", "udp://127.0.0.1:0")  # fmt: skip
    started.append(rt)
    poll(rt.ready, what="ready")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for n in range(10):
            sock.sendto(b"ping %d" % n, rt.address)
            assert sock.recvfrom(100)[0] == b"ping %d" % n
    poll(lambda: rt.metric("socketserver_requests_total", transport="udp") == 10,
         what="10 datagrams counted")  # fmt: skip


def test_each_worker_exports_its_own_traces(started: list[RuntimeProcess]) -> None:
    from otlp_receiver import OTLPReceiver

    receiver = OTLPReceiver()
    try:
        rt = prefork(started, "handlers:HoldHandler", "--workers", "2",
                     OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                     OTEL_SERVICE_NAME="prefork-under-test")  # fmt: skip
        poll(lambda: ready_workers(rt) == 2, what="two workers")
        held = [hold(rt.address), hold(rt.address)]  # one in each sync worker
        assert [release(s) for s in held] == [b"done\n", b"done\n"]
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0, err
        spans = [s for s in receiver.spans if s.name == "HoldHandler tcp"]
    finally:
        receiver.close()
    assert len(spans) == 2  # flushed by each worker before it exited
    instances = {s.resource["service.instance.id"] for s in spans}
    assert len(instances) == 2  # one per worker process
    assert {s.resource["service.name"] for s in spans} == {"prefork-under-test"}


def test_readiness_needs_the_minimum_workers(started: list[RuntimeProcess]) -> None:
    rt = prefork(started, "handlers:PidHandler", "--workers", "2", "--min-workers", "2")
    poll(lambda: ready_workers(rt) == 2, what="two workers")
    assert rt.ready()
    rt.signal(signal.SIGTTOU)  # one worker fewer than the minimum
    poll(lambda: not rt.ready(), what="readiness to fail below the minimum")
    assert rt.get("/livez")[0] == 200  # alive: the supervisor's loop runs
    rt.signal(signal.SIGTTIN)
    poll(rt.ready, what="ready again with two workers")


def test_reuse_port_workers_serve_and_drain(started: list[RuntimeProcess]) -> None:
    rt = prefork(started, "handlers:HoldHandler", "--workers", "2", "--reuse-port")
    poll(lambda: ready_workers(rt) == 2, what="two workers")
    # The kernel hashes connections over the workers' own listeners; with sixteen, both
    # sync workers hold one (all on one worker: 1 in 32,768) and the rest wait in their queues.
    held = [socket.create_connection(rt.address, timeout=10) for _ in range(16)]
    for sock in held:
        sock.sendall(b"hold\n")
    poll(lambda: rt.metric("socketserver_workers", state="busy") == 2, what="both workers busy")
    rt.signal(signal.SIGTERM)
    poll(lambda: not rt.ready(), timeout=2, what="readiness to fail")
    for sock in held:
        sock.sendall(b"go\n")
    # Each worker serves what is in its own queue before it exits: none is reset.
    for sock in held:
        with sock:
            assert sock.makefile("rb").read() == b"ack\ndone\n"
    code, err = rt.wait()
    assert code == 0, err


def test_a_killed_supervisor_s_folder_is_removed_by_the_next(started: list[RuntimeProcess]) -> None:
    first = prefork(started, "handlers:PidHandler", "--workers", "1")
    lines = log_lines("".join(first.stderr_lines()))
    (start,) = [x for x in lines if x.get("event") == "prefork"]
    workers = [int(x["pid"]) for x in lines if x.get("event") == "worker started"]
    folder = Path(str(start["metrics_dir"])).parent
    first.proc.kill()  # no cleanup; its worker notices and stops
    first.proc.wait(10)
    assert folder.exists()
    # The orphaned worker holds the folder's lock until it is gone: only then is it stale.
    poll(lambda: all(_gone(pid) for pid in workers), timeout=20, what="the orphaned worker gone")
    prefork(started, "handlers:PidHandler", "--workers", "1")
    assert not folder.exists()


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper holds no lock any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_unix_stream_prefork(started: list[RuntimeProcess], tmp_path: Path) -> None:
    import subprocess

    from _proc import ROOT, env

    path = tmp_path / "echo.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "echo", "--mode", "prefork", "--workers", "2",
         "--bind", f"unix:{path}", "--admin", "off", "--drain-delay", "0", "--log-format", "json"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert f"unix:{path}" in proc.stdout.readline()
        for n in range(10):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(b"line %d\n" % n)
                sock.shutdown(socket.SHUT_WR)
                assert sock.makefile("rb").read() == b"line %d\n" % n
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        access = [x for x in log_lines(err) if x.get("event") == "request"]
        assert len(access) == 10 and all(x["outcome"] == "ok" for x in access)
        assert not path.exists()  # removed at exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_slot_table_reads_never_see_a_half_written_heartbeat() -> None:
    """The supervisor reads heartbeats while workers write them, without a lock.

    A heartbeat read as 0.0 while a worker was storing it once made the supervisor
    abort a healthy worker as hung (`heartbeat_age_seconds` = the machine's uptime).
    """
    from runtime._prefork_worker import Slots

    slots = Slots(2)
    slots.reset(1, 0)
    start = slots.read(1)["heartbeat"]
    pid = os.fork()
    if pid == 0:  # the worker: beat and count as fast as it can, for at most 5 s
        code = 1
        try:
            deadline = start + 5.0
            n = 0
            while slots.read(1)["pid"] != -1 and slots.read(1)["heartbeat"] < deadline:
                for _ in range(1000):
                    slots.beat(1)
                n += 1000
                slots.set_requests(1, n % 7, n)
            code = 0
        finally:
            os._exit(code)
    oldest = float("inf")
    reads = 0
    try:
        poll(lambda: slots.read(1)["handled"] > 0, what="the worker writing")
        for _ in range(300_000):  # ~0.5 s of reads while the other process writes
            row = slots.read(1)
            oldest = min(oldest, row["heartbeat"])
            assert 0 <= row["in_flight"] < 7
            reads += 1
        written = slots.read(1)["handled"]
    finally:
        slots.reset(1, -1)  # pid -1: stop writing
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert written > 1000  # the writer really ran alongside
    assert oldest >= start, f"a heartbeat read as {oldest} (start {start}) in {reads} reads"


def test_an_idle_client_does_not_get_a_sync_worker_aborted_as_hung(
    started: list[RuntimeProcess],
) -> None:
    """A sync worker waiting on an idle connection does not beat: its idle limit stays below."""
    # (--header-timeout none: the idle client reaches the handler, instead of waiting for
    # its first line in the serving loop, where the worker keeps beating anyway)
    rt = prefork(started, "echo", "--workers", "1", "--worker-timeout", "2",
                 "--connection-timeout", "60", "--header-timeout", "none")  # fmt: skip
    idle = socket.create_connection(rt.address, timeout=20)
    with idle:
        idle.settimeout(20)
        assert idle.recv(1) == b""  # closed by the worker after 1 s (half the worker timeout)
    assert ask(rt.address) == b"hi\n"  # and the same worker serves on
    assert rt.metric("socketserver_worker_restarts_total") == 0
    assert rt.metric("socketserver_worker_exits_total", cause="timeout") == 0
    rt.signal(signal.SIGTERM)
    code, err = rt.wait()
    assert code == 0, err
    (capped,) = [x for x in log_lines(err)
                 if str(x.get("event", "")).startswith("connection timeout")]  # fmt: skip
    assert (capped["connection_timeout"], capped["requested"]) == (1.0, 60.0)


def test_a_scrape_while_a_worker_creates_its_metric_file_succeeds(
    started: list[RuntimeProcess],
) -> None:
    """A booting worker's file is empty for a moment; prometheus-client failed the scrape on it."""
    rt = prefork(started, "echo", "--workers", "1", "--log-format", "json")
    assert ask(rt.address) == b"hi\n"
    (start,) = [x for x in log_lines("".join(rt.stderr_lines())) if x.get("event") == "prefork"]
    being_born = Path(str(start["metrics_dir"])) / "counter_w7.db"
    being_born.touch()  # as prometheus-client's open(..., "a+b") leaves it before sizing it
    poll(lambda: rt.metric("socketserver_requests_total") == 1, what="the request counted")
    assert rt.get("/metrics")[0] == 200
