"""What HTTP-as-the-unit costs per request: wrk against the HTTP hello servers, interleaved.

    python bench/http_cost.py [--before DIR] [--rounds 3] [--duration 5] [--connections 64]

Servers (``http_servers.py``; each pinned to CPU 0, wrk to CPU 1, keep-alive, every
reply checked by ``wrk_check.lua``):

- ``runtime-http-metrics``: metrics on (the HTTP families included), no tracer, no access line
- ``runtime-http``: metrics, traces at 1 % (parent-based), no access line (as in bench-suite)
- ``runtime-http-traced``: every request traced (its span, and the connection's)
- ``runtime-http-access``: metrics, 1 % traces and a JSON access line per request
- ``before``: ``runtime-http`` of another checkout (``--before``, e.g. a ``git worktree``
  of the commit before issue 13): the connection-level telemetry only
- ``gunicorn-sync``: gunicorn's sync workers (2), as in ``make bench-suite``
- ``stdlib-http-nodelay``: ``http.server`` as is (TCP_NODELAY set, as the runtime does):
  the ceiling, what the same handler costs with no runtime at all

Rounds interleave the servers, so a busy moment of the machine costs each the same.
The report gives req/s (median of the rounds), the p99 latency, the CPU microseconds the
server's process tree spent per request, and each runtime row against gunicorn-sync
and against ``before`` measured in the same rounds.  Loopback only, bounded in time; it
stops the servers it started (by process group).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_check.lua"
SERVERS = (
    "runtime-http-metrics", "runtime-http", "runtime-http-traced", "runtime-http-access",
    "gunicorn-sync", "stdlib-http-nodelay",
)  # fmt: skip
SERVER_CPU, LOAD_CPU = 0, 1


def start(script: Path, name: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(script), name, "--cpu", str(SERVER_CPU), "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        stop(proc)
        raise SystemExit(f"{name}: no port printed ({line!r})")
    return proc, int(line)


def stop(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def tree_cpu(pid: int) -> float:
    """CPU seconds of *pid* and its live children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def measure(port: int, pid: int, duration: int, connections: int) -> dict[str, float]:
    before = tree_cpu(pid)
    done = subprocess.run(
        ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         "--timeout=5s", "--latency", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    )  # fmt: skip
    cpu = tree_cpu(pid) - before
    out = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    errors = sum(out["errors"].values()) + out["mismatches"]
    if errors:
        raise SystemExit(f"wrk saw {errors} errors or wrong replies: {out}")
    seconds = out["duration_us"] / 1e6
    return {
        "rps": out["good"] / seconds,
        "p99_ms": out["p99_ms"],
        "cpu_us": cpu / out["good"] * 1e6 if out["good"] else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout: its runtime-http")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--only", help="comma-separated server names (default: all)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("needs wrk (Debian: apt-get install wrk)")
    only = set(args.only.split(",")) if args.only else None
    servers = [(name, HERE / "http_servers.py", name) for name in SERVERS]
    if args.before is not None:
        servers.append(("before", args.before / "bench" / "http_servers.py", "runtime-http"))
    if only is not None:
        servers = [server for server in servers if server[0] in only | {"gunicorn-sync"}]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in servers}
    for round_number in range(args.rounds):
        for label, script, name in servers:
            proc, port = start(script, name)
            try:
                measure(port, proc.pid, 1, args.connections)  # warm-up
                results[label].append(measure(port, proc.pid, args.duration, args.connections))
            finally:
                stop(proc)
            last = results[label][-1]
            print(f"round {round_number + 1} {label}: {last['rps']:,.0f} req/s, "
                  f"{last['cpu_us']:.1f} us CPU/req", flush=True)  # fmt: skip

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for r in results[label])

    print(f"\n{'server':<22}{'req/s':>10}{'p99 ms':>9}{'CPU us/req':>12}{'vs gunicorn':>13}"
          f"{'vs before':>11}")  # fmt: skip
    summary = {}
    for label, _, _ in servers:
        rps, cpu = median(label, "rps"), median(label, "cpu_us")
        vs_gunicorn = rps / median("gunicorn-sync", "rps")
        vs_before = rps / median("before", "rps") if results.get("before") else float("nan")
        summary[label] = {"rps": rps, "p99_ms": median(label, "p99_ms"), "cpu_us": cpu,
                          "vs_gunicorn": vs_gunicorn, "vs_before": vs_before}  # fmt: skip
        print(f"{label:<22}{rps:>10,.0f}{median(label, 'p99_ms'):>9.2f}{cpu:>12.1f}"
              f"{vs_gunicorn:>12.2f}x{vs_before:>10.2f}x")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
