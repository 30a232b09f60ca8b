"""Issues 4 and 5's benchmark in one command: the standard library, gunicorn and the runtime.

    .venv/bin/python bench/suite.py [--duration 10] [--runs 3] [--clients 8,64,512]
                                    [--scenarios connect,keepalive,http] [--smoke]

Scenarios (``--scenarios``):

- ``connect``: connect-per-request over TCP (``bench/loadgen --mode connect``) at
  each ``--clients`` count, against the line-echo servers of ``echo_servers.py``;
- ``keepalive``: one long-lived connection per client (``--mode keepalive``);
  the load generator reports the clients that starve;
- ``http``: wrk (``-t1 -c64 --latency``, every reply checked by ``wrk_check.lua``)
  against the HTTP hello servers of ``http_servers.py``, gunicorn included (sync
  and gthread workers).

The runtime's pre-fork pool (``prefork_servers.py``: ``python -m runtime
--mode prefork --workers 2``) takes part in all three, on a shared listening
socket and on SO_REUSEPORT sockets (skipped, with a note, when the runtime's
command line has no ``--reuse-port``); for HTTP also with threads and keep-alive.

Every server is started once, pinned to ``--server-cpu``; the load generator
and this process run on ``--loadgen-cpu``.  For each scenario and client count
the servers get ``--runs`` runs in interleaved rounds (the first server
rotating), so drift of the machine hits them alike, and every ratio is taken
against a baseline measured in the same round.  During each run the server's
process tree (forked children and gunicorn workers included) is sampled for
threads and memory; its CPU time comes from ``/proc`` before and after.
After the runs, ``metrics_render.py`` times ``/metrics`` rendering.

The table goes to stdout with a targets section (issue 4, item 2, and issue 5,
item 6: PASS or FAIL with the measured ratio; informational ratios without a
limit), progress to stderr, and everything to
``bench/results/suite-<time>.json``.  Exit status: 0; 1 if a scenario got no
good reply; 2 if the harness broke; 130 if interrupted.  A benchmark, not a
test: a FAIL does not change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import _harness
import prefork_servers
from _harness import (
    BENCH,
    LOADGEN,
    HarnessError,
    add_run_arguments,
    build_loadgen,
    environment,
    percent_text,
    pick_cpus,
)
from _proc import (
    ServerProcess,
    cpu_busy_seconds,
    raise_fd_limit,
    start_server,
    tree_cpu_seconds,
    tree_usage,
)
from _report import (
    BASELINES,
    Sample,
    Summary,
    evaluate_targets,
    notes,
    summarize,
    table,
    targets_text,
)

SCENARIOS = ("connect", "keepalive", "http")
WRK_SCRIPT = BENCH / "wrk_check.lua"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    script: str  # which file of bench/ starts it
    scenarios: tuple[str, ...]
    #: In a run that names no --servers (the runtime's own variants run when named: make bench).
    default: bool = True


SPECS = (
    ServerSpec("stdlib-threading", "echo_servers.py", ("connect", "keepalive")),
    ServerSpec("stdlib-pool8", "echo_servers.py", ("connect", "keepalive")),
    ServerSpec("stdlib-forking", "echo_servers.py", ("connect", "keepalive")),
    ServerSpec("runtime-lean", "echo_servers.py", ("connect",)),
    ServerSpec("runtime-full", "echo_servers.py", ("connect",)),
    ServerSpec("runtime-default", "echo_servers.py", ("keepalive",)),
    ServerSpec("runtime-forking", "echo_servers.py", ("connect",)),
    ServerSpec("runtime-prefork", "prefork_servers.py", ("connect", "keepalive")),
    ServerSpec("runtime-prefork-reuseport", "prefork_servers.py", ("connect", "keepalive")),
    ServerSpec("stdlib-http", "http_servers.py", ("http",)),
    ServerSpec("stdlib-http-nodelay", "http_servers.py", ("http",)),
    ServerSpec("runtime-http", "http_servers.py", ("http",)),
    ServerSpec("runtime-prefork-http", "prefork_servers.py", ("http",)),
    ServerSpec("runtime-prefork-http-reuseport", "prefork_servers.py", ("http",)),
    ServerSpec("runtime-prefork-http-threads", "prefork_servers.py", ("http",)),
    ServerSpec("gunicorn-sync", "http_servers.py", ("http",)),
    ServerSpec("gunicorn-gthread", "http_servers.py", ("http",)),
    # `make bench`: what the runtime's ThreadingTCPServer costs with its parts on and off.
    ServerSpec("runtime-threading", "echo_servers.py", ("connect",), default=False),
    ServerSpec("runtime-threading-notel", "echo_servers.py", ("connect",), default=False),
    ServerSpec("runtime-threading-nolog", "echo_servers.py", ("connect",), default=False),
    ServerSpec("runtime-threading-watchdog", "echo_servers.py", ("connect",), default=False),
)
BY_NAME = {spec.name: spec for spec in SPECS}
SMOKE_CLIENTS = {"connect": [8, 64, 512], "keepalive": [64]}
#: A server is quiet when its tree used at most QUIET_CPU seconds in QUIET_WINDOW.
QUIET_WINDOW, QUIET_CPU = 0.25, 0.01
SETTLE_LIMIT = 30.0
#: A note says when a server took longer than this to stop after SIGTERM.
SLOW_STOP = 2.0


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind, so every server is stopped."""


# -- the load ----------------------------------------------------------------------------


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def load_command(
    scenario: str, port: int, clients: int, duration: float, timeout: float, cpu: int | None
) -> list[str]:
    if scenario == "http":
        # wrk takes whole seconds.
        return pinned(
            ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(duration))}s",
             f"--timeout={max(1, round(timeout))}s", "--latency", "-s", str(WRK_SCRIPT),
             f"http://127.0.0.1:{port}/"],
            cpu,
        )  # fmt: skip
    cmd = [
        str(LOADGEN), "--mode", scenario, "--port", str(port), "--clients", str(clients),
        "--duration", str(duration), "--timeout", str(timeout),
    ]  # fmt: skip
    return cmd if cpu is None else [*cmd, "--cpu", str(cpu)]


def parse_load(scenario: str, stdout: str) -> dict[str, Any]:
    """The load generator's or wrk's result, as the fields of a :class:`Sample`."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise HarnessError(f"no JSON result from the load generator:\n{stdout}")
    out: dict[str, Any] = json.loads(lines[-1])
    if scenario == "http":
        errors = out["errors"]
        seconds = out["duration_us"] / 1e6
        return {
            "requests": out["good"],
            "rps": out["good"] / seconds if seconds else 0.0,
            "p50_ms": out["p50_ms"],
            "p99_ms": out["p99_ms"],
            "errors": errors["connect"] + errors["read"] + errors["write"] + out["mismatches"],
            "timeouts": errors["timeout"],
            "starved": None,
            "port_exhaustion": 0,
            "raw": out,
        }
    return {
        "requests": out["requests"],
        "rps": out["rps"],
        "p50_ms": out["p50_ms"],
        "p99_ms": out["p99_ms"],
        "errors": out["errors"],
        "timeouts": out["timeouts"],
        "starved": out["clients_starved"],
        "port_exhaustion": out["port_exhaustion"],
        "raw": out,
    }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Peak:
    threads: int = 0
    memory_bytes: int = 0

    def sample(self, pid: int) -> None:
        usage = tree_usage(pid)
        self.threads = max(self.threads, usage.threads)
        self.memory_bytes = max(self.memory_bytes, usage.memory_bytes)


def run_load(
    cmd: list[str], server: ServerProcess, limit: float, interval: float
) -> tuple[str, float, Peak]:
    """Run the load *cmd* to its end, sampling *server*'s tree every *interval*;
    return its stdout, its wall time and the peaks."""
    peak = Peak()
    start = time.monotonic()
    try:
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise HarnessError(f"cannot run {cmd[0]}: {exc}") from exc
    try:
        while True:
            try:
                load.wait(interval)
                break
            except subprocess.TimeoutExpired:
                peak.sample(server.pid)
            if time.monotonic() - start > limit:
                raise HarnessError(f"{' '.join(cmd)} did not stop in {limit:.0f} s")
        wall = time.monotonic() - start
        peak.sample(server.pid)
        stdout, stderr = load.communicate()
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if load.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed ({load.returncode}): {stderr.strip()}")
    return stdout, wall, peak


def settle(server: ServerProcess, limit: float = SETTLE_LIMIT) -> float:
    """Wait until *server*'s tree stops using CPU; return how long that took.

    A server can keep working after the load stops, e.g. a forking server
    taking the connections its clients gave up on from its backlog; measuring
    the next server meanwhile would charge that work to it (as ``other``).
    """
    start = time.monotonic()
    before = tree_cpu_seconds(server.pid)
    while time.monotonic() - start < limit:
        time.sleep(QUIET_WINDOW)
        now = tree_cpu_seconds(server.pid)
        if now - before <= QUIET_CPU:
            break
        before = now
    return time.monotonic() - start


def measure(
    server: ServerProcess,
    args: argparse.Namespace,
    *,
    scenario: str,
    clients: int,
    round_: int,
    duration: float,
    cpus: tuple[int | None, int | None],
) -> Sample:
    server_cpu, loadgen_cpu = cpus
    server.check_alive()
    cmd = load_command(scenario, server.port, clients, duration, args.timeout, loadgen_cpu)
    busy_before = cpu_busy_seconds(server_cpu) if server_cpu is not None else 0.0
    load_before = children_cpu_seconds()
    before = tree_cpu_seconds(server.pid)
    stdout, wall, peak = run_load(cmd, server, duration + args.timeout + 30, args.sample_interval)
    after = tree_cpu_seconds(server.pid)
    load_cpu = children_cpu_seconds() - load_before
    busy_after = cpu_busy_seconds(server_cpu) if server_cpu is not None else 0.0
    settled = settle(server)
    server.check_alive()
    server.scan_log()
    other = None
    if server_cpu is not None:
        other = max(0.0, (busy_after - busy_before) - (after - before))
    return Sample(
        scenario=scenario,
        server=server.name,
        clients=clients,
        round=round_,
        wall_seconds=wall,
        server_cpu_seconds=after - before,
        loadgen_cpu_seconds=load_cpu,
        other_cpu_seconds=other,
        peak_threads=peak.threads,
        peak_memory_bytes=peak.memory_bytes,
        settle_seconds=settled,
        **parse_load(scenario, stdout),
    )


def measure_quietly(
    server: ServerProcess,
    args: argparse.Namespace,
    *,
    scenario: str,
    clients: int,
    round_: int,
    cpus: tuple[int | None, int | None],
) -> tuple[Sample, list[Sample]]:
    """One sample, taken again while the server's CPU was noisy (``--noise-limit``)."""

    def describe(sample: Sample, other: float) -> str:
        return (
            f"  {scenario:<9} {server.name:<30} clients={clients:<4} round={round_} "
            f"req/s={sample.rps:9.0f} errors={sample.errors} timeouts={sample.timeouts}"
            + (f" starved={sample.starved}" if sample.starved is not None else "")
            + f" other={percent_text(other)}"
        )

    return _harness.measure_quietly(
        lambda: measure(server, args, scenario=scenario, clients=clients, round_=round_,
                        duration=args.duration, cpus=cpus),
        describe, noise_limit=args.noise_limit, retries=args.retries,
    )  # fmt: skip


# -- the servers -------------------------------------------------------------------------


@contextmanager
def running_servers(
    names: Sequence[str], cpu: int | None, workdir: Path
) -> Iterator[dict[str, ServerProcess]]:
    """Start every server at once, wait for their ports; stop them all on the way out."""
    with ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        for name in names:
            cmd = [sys.executable, str(BENCH / BY_NAME[name].script), name, "--exit-on-stdin-eof"]
            if cpu is not None:
                cmd += ["--cpu", str(cpu)]
            if name == "runtime-full":
                cmd += ["--access-log", str(workdir / "runtime-full-access.log")]
            server = start_server(name, cmd)
            stack.callback(server.stop)
            servers[name] = server
        for server in servers.values():
            server.wait_port()
        yield servers
        for server in servers.values():
            summary = server.log_summary()
            if summary:
                print(f"note: {summary}", file=sys.stderr)


def truncate_access_log(workdir: Path) -> None:
    """runtime-full appends an access line per request: keep the file small between runs."""
    path = workdir / "runtime-full-access.log"
    if path.exists():
        os.truncate(path, 0)


def measure_render(args: argparse.Namespace, cpu: int | None) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "metrics_render.py"), "--json"]
    cmd += ["--requests", "300", "--renders", "30"] if args.smoke else []
    cmd += ["--cpu", str(cpu)] if cpu is not None else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"metrics_render.py failed: {exc.stderr}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError("metrics_render.py did not finish in time") from exc
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def plan(args: argparse.Namespace) -> list[tuple[str, int, list[str]]]:
    """(scenario, clients, servers) in the order they run."""
    groups = []
    for scenario in args.scenario_names:
        chosen = {s.name for s in SPECS if scenario in s.scenarios and s.name in args.server_names}
        chosen |= {BASELINES[n] for n in chosen if n in BASELINES}  # ratios need them, same run
        names = [s.name for s in SPECS if s.name in chosen]
        counts = [args.http_connections] if scenario == "http" else args.clients_by[scenario]
        groups += [(scenario, clients, names) for clients in counts]
    return groups


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every scenario; return samples, discarded samples, summaries, render, logs."""
    build_loadgen()
    server_cpu, loadgen_cpu = pick_cpus(args.server_cpu, args.loadgen_cpu)
    if loadgen_cpu is not None:
        os.sched_setaffinity(0, {loadgen_cpu})  # this process samples /proc: not on the server's
    groups = plan(args)
    raise_fd_limit(max(clients for _, clients, _ in groups) + 256)
    names = list(dict.fromkeys(name for _, _, names in groups for name in names))
    samples: list[Sample] = []
    discarded: list[Sample] = []
    cpus = (server_cpu, loadgen_cpu)
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        workdir = Path(tmp)
        with running_servers(names, server_cpu, workdir) as servers:
            for scenario, clients, group in groups:
                members = [servers[name] for name in group]
                if args.warmup > 0:
                    for server in members:
                        measure(server, args, scenario=scenario, clients=clients, round_=-1,
                                duration=args.warmup, cpus=cpus)  # fmt: skip
                for round_ in range(args.runs):
                    k = round_ % len(members)  # rotate who goes first
                    for server in members[k:] + members[:k]:
                        truncate_access_log(workdir)
                        sample, noisy = measure_quietly(
                            server, args, scenario=scenario, clients=clients, round_=round_,
                            cpus=cpus,
                        )  # fmt: skip
                        samples.append(sample)
                        discarded += noisy
        logs = {name: {"lines": s.log_lines, "errors": s.log_errors} for name, s in servers.items()}
        render = measure_render(args, server_cpu)
    return {
        "samples": samples,
        "discarded": discarded,
        "summaries": summarize(samples, groups, args.noise_limit),
        "render": render,
        "logs": logs,
        "shutdown": {name: (s.stop_seconds, s.stop_forced) for name, s in servers.items()},
    }


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_run_arguments(parser, [spec.name for spec in SPECS if spec.default])
    parser.add_argument("--clients", default=None, help="TCP client counts (default 8,64,512)")
    parser.add_argument("--http-connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--sample-interval", type=float, default=0.1, help="seconds")
    parser.add_argument(
        "--smoke", action="store_true", help="~1 s per run, one run; every server and scenario"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.runs, args.warmup, args.retries, args.timeout = 1.0, 1, 0.0, 0, 1.0
    try:
        counts = sorted({int(c) for c in (args.clients or "8,64,512").split(",") if c.strip()})
    except ValueError:
        parser.error("--clients takes comma-separated integers, e.g. 8,64,512")
    # Ascending, so the bounded-cost target compares a server's memory with its earlier self.
    args.clients_by = {"connect": counts, "keepalive": counts}
    if args.smoke and args.clients is None:
        args.clients_by = SMOKE_CLIENTS
    args.scenario_names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.scenario_names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {SCENARIOS})")
    unknown = set(args.server_names) - set(BY_NAME)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.duration <= 0 or not counts or not args.scenario_names:
        parser.error("--runs >= 1, --duration > 0, a client count and a scenario are required")
    if "http" in args.scenario_names and shutil.which("wrk") is None:
        parser.error("the http scenario needs wrk (Debian: apt-get install wrk)")
    # Servers this runtime cannot run (no --reuse-port yet): left out, with a note.
    args.skipped = prefork_servers.unavailable(args.server_names)
    args.server_names = [n for n in args.server_names if n not in args.skipped]
    return args


def write_results(args: argparse.Namespace, env: dict[str, Any], result: dict[str, Any]) -> Path:
    results: Path = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results / f"suite-{stamp}{'-smoke' if args.smoke else ''}.json"
    payload = {
        "command": [sys.executable, *sys.argv],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env,
        "summaries": [asdict(s) for s in result["summaries"]],
        "targets": [asdict(t) for t in result["targets"]],
        "render": result["render"],
        "server_logs": result["logs"],
        "server_shutdown": {
            name: {"seconds": seconds, "killed": forced}
            for name, (seconds, forced) in result["shutdown"].items()
        },
        "skipped_servers": args.skipped,
        "samples": [s.as_json() for s in result["samples"]],
        "discarded_noisy_samples": [s.as_json() for s in result["discarded"]],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    setting = (
        f"{args.runs} run(s) x {args.duration:g} s per scenario, server on CPU {args.server_cpu}, "
        f"load generator on CPU {args.loadgen_cpu}"
    )
    print(setting, file=sys.stderr)
    for name, why in args.skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    try:
        result = run(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"interrupted ({exc or 'SIGINT'}); servers stopped", file=sys.stderr)
        return 130
    summaries: list[Summary] = result["summaries"]
    result["targets"] = evaluate_targets(
        summaries, result["samples"], result["render"], args.skipped
    )
    env = environment()
    print(
        f"\npython {env['python']}, kernel {env['kernel']}, {env['cpu_model']} x{env['cpus']}, "
        f"revision {env['revision'] or '?'}, {time.strftime('%Y-%m-%d')}"
    )
    print(setting)
    print(table(summaries))
    print()
    print(targets_text(result["targets"], result["render"]))
    for note in notes(summaries, result["discarded"], args.noise_limit):
        print(f"note: {note}")
    for name, why in args.skipped.items():
        print(f"note: {name} skipped: {why}")
    for name, (seconds, forced) in result["shutdown"].items():
        if forced:
            print(f"note: {name} did not stop within {seconds:.0f} s of SIGTERM: killed")
        elif seconds > SLOW_STOP:
            print(f"note: {name} took {seconds:.1f} s to stop after SIGTERM")
    path = write_results(args, env, result)
    print(f"results: {path}")
    empty = [s for s in summaries if s.min_requests == 0]
    for s in empty:
        print(f"smoke: {s.scenario} {s.server} @ {s.clients} had no good reply")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
