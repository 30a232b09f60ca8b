"""Compare the runtime's ThreadingTCPServer with the standard library's, in one run.

    .venv/bin/python bench/compare_stdlib.py [--duration 10] [--runs 3] [--clients 8,64] [--smoke]

Builds ``bench/build/loadgen`` if needed, starts every server of
``echo_servers.py`` pinned to one CPU, and drives each with the C load
generator (connect-per-request) pinned to another CPU.  For each server and
client count it runs ``--runs`` measurements, interleaved across servers
(round-robin, the starting server rotating each round) so that drift of the
machine hits every server alike, and prints the medians with the ratio
against ``stdlib-threading`` measured in the same invocation.

Server CPU per request is the server process's utime+stime (from
``/proc/<pid>/stat``, all its threads, live and exited, plus any child
processes) over the run, divided by the replies the load generator received
and checked.  ``suite.py`` runs the wider comparison of issue 4 (keep-alive,
512 clients, forking servers, HTTP and gunicorn).

``--smoke`` runs every scenario once for about a second and exits non-zero if
any scenario got no successful request or the harness broke.  Results go to
``bench/results/`` as JSON.  This is a benchmark, not a test: it asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _harness
from _harness import (
    BENCH,
    LOADGEN,
    HarnessError,
    add_run_arguments,
    build_loadgen,
    environment,
    median,
    percent_text,
    pick_cpus,
    ratio_text,
)
from _proc import ServerProcess, cpu_busy_seconds, start_server, tree_cpu_seconds

ECHO_SERVERS = BENCH / "echo_servers.py"

BASELINE = "stdlib-threading"
SERVERS = (
    BASELINE,
    "runtime-threading",
    "runtime-threading-notel",
    "runtime-threading-nolog",
    "runtime-threading-watchdog",
)
MODE = "connect"


@dataclass(frozen=True)
class Sample:
    """One load-generator run against one server, with the CPU time spent around it."""

    server: str
    clients: int
    round: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    timeouts: int
    port_exhaustion: int
    clients_with_zero_replies: int
    server_cpu_seconds: float
    loadgen_cpu_seconds: float
    #: Busy time of the server's CPU not spent by the server (other processes,
    #: steal, softirq outside its context); None when not pinned.
    other_cpu_seconds: float | None
    loadgen: dict[str, Any] = field(repr=False)

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests * 1e6 if self.requests else math.nan

    def share(self, cpu_seconds: float | None) -> float:
        """*cpu_seconds* as a fraction of one CPU over this run."""
        return cpu_seconds / self.seconds if cpu_seconds is not None and self.seconds else math.nan


@dataclass(frozen=True)
class Summary:
    """The runs of one (server, clients) scenario: medians, and sums of failures.

    ``rps_ratio`` and ``cpu_ratio`` are medians of per-round ratios against
    the baseline's sample of the same round (paired, so drift cancels).
    """

    server: str
    clients: int
    runs: int
    rps: float
    rps_min: float
    rps_max: float
    rps_ratio: float
    p50_ms: float
    p99_ms: float
    errors: int
    timeouts: int
    port_exhaustion: int
    clients_with_zero_replies: int
    cpu_us_per_request: float
    cpu_ratio: float
    server_cpu_share: float
    loadgen_cpu_share: float
    other_cpu_share: float
    noisy_runs: int
    min_requests: int

    @classmethod
    def of(
        cls, samples: Sequence[Sample], baseline: Sequence[Sample], noise_limit: float
    ) -> Summary:
        first = samples[0]
        rps = [s.rps for s in samples]
        base = {b.round: b for b in baseline}
        pairs = [(s, base[s.round]) for s in samples if s.round in base]
        return cls(
            server=first.server,
            clients=first.clients,
            runs=len(samples),
            rps=statistics.median(rps),
            rps_min=min(rps),
            rps_max=max(rps),
            rps_ratio=median([s.rps / b.rps if b.rps else math.nan for s, b in pairs]),
            p50_ms=statistics.median(s.p50_ms for s in samples),
            p99_ms=statistics.median(s.p99_ms for s in samples),
            errors=sum(s.errors for s in samples),
            timeouts=sum(s.timeouts for s in samples),
            port_exhaustion=sum(s.port_exhaustion for s in samples),
            clients_with_zero_replies=max(s.clients_with_zero_replies for s in samples),
            cpu_us_per_request=median([s.cpu_us_per_request for s in samples]),
            cpu_ratio=median([s.cpu_us_per_request / b.cpu_us_per_request for s, b in pairs]),
            server_cpu_share=median([s.share(s.server_cpu_seconds) for s in samples]),
            loadgen_cpu_share=median([s.share(s.loadgen_cpu_seconds) for s in samples]),
            other_cpu_share=median([s.share(s.other_cpu_seconds) for s in samples]),
            noisy_runs=sum(s.share(s.other_cpu_seconds) > noise_limit for s in samples),
            min_requests=min(s.requests for s in samples),
        )


# -- processes ----------------------------------------------------------------------


@contextmanager
def running_server(name: str, cpu: int | None) -> Iterator[ServerProcess]:
    """Start server *name*; always stop it (SIGTERM, then SIGKILL) on the way out."""
    cmd = [sys.executable, str(ECHO_SERVERS), name, "--exit-on-stdin-eof"]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    server = start_server(name, cmd)
    try:
        server.wait_port()
        yield server
    finally:
        server.stop()


# -- measuring -------------------------------------------------------------------------


def run_loadgen(
    server: ServerProcess, *, clients: int, duration: float, timeout: float, cpu: int | None
) -> dict[str, Any]:
    cmd = [
        str(LOADGEN), "--mode", MODE, "--port", str(server.port), "--clients", str(clients),
        "--duration", str(duration), "--timeout", str(timeout),
    ]  # fmt: skip
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=duration + timeout + 30
        )
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"load generator failed ({exc.returncode}): {exc.stderr}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError("load generator did not stop in time") from exc
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(
    server: ServerProcess,
    *,
    clients: int,
    round_: int,
    duration: float,
    timeout: float,
    server_cpu: int | None,
    loadgen_cpu: int | None,
) -> Sample:
    server.check_alive()
    busy_before = cpu_busy_seconds(server_cpu) if server_cpu is not None else 0.0
    before = tree_cpu_seconds(server.pid)
    out = run_loadgen(server, clients=clients, duration=duration, timeout=timeout, cpu=loadgen_cpu)
    after = tree_cpu_seconds(server.pid)
    busy_after = cpu_busy_seconds(server_cpu) if server_cpu is not None else 0.0
    server.check_alive()
    other = None
    if server_cpu is not None:
        other = max(0.0, (busy_after - busy_before) - (after - before))
    return Sample(
        server=server.name,
        clients=clients,
        round=round_,
        seconds=float(out["seconds"]),
        requests=int(out["requests"]),
        rps=float(out["rps"]),
        p50_ms=float(out["p50_ms"]),
        p99_ms=float(out["p99_ms"]),
        errors=int(out["errors"]),
        timeouts=int(out["timeouts"]),
        port_exhaustion=int(out["port_exhaustion"]),
        clients_with_zero_replies=int(out["clients_with_zero_replies"]),
        server_cpu_seconds=after - before,
        loadgen_cpu_seconds=float(out["cpu_seconds"]),
        other_cpu_seconds=other,
        loadgen=out,
    )


def measure_quietly(
    server: ServerProcess,
    args: argparse.Namespace,
    *,
    clients: int,
    round_: int,
    cpus: tuple[int | None, int | None],
) -> tuple[Sample, list[Sample]]:
    """One sample, taken again while the server's CPU was noisy (``--noise-limit``)."""

    def describe(sample: Sample, other: float) -> str:
        return (
            f"  {server.name:<26} clients={clients:<4} round={round_} req/s={sample.rps:9.0f} "
            f"errors={sample.errors} timeouts={sample.timeouts} other={percent_text(other)}"
        )

    return _harness.measure_quietly(
        lambda: measure(server, clients=clients, round_=round_, duration=args.duration,
                        timeout=args.timeout, server_cpu=cpus[0], loadgen_cpu=cpus[1]),
        describe, noise_limit=args.noise_limit, retries=args.retries,
    )  # fmt: skip


# -- reporting -------------------------------------------------------------------------

COLUMNS = (
    ("server", 26, "s"), ("clients", 7, "d"), ("req/s", 7, ".0f"), ("vs stdlib", 9, "s"),
    ("spread", 6, "s"), ("p50 ms", 6, ".3f"), ("p99 ms", 6, ".3f"), ("errors", 6, "d"),
    ("timeouts", 8, "d"), ("CPU us/req", 10, ".1f"), ("vs stdlib", 9, "s"),
    ("srv CPU", 7, "s"), ("lg CPU", 6, "s"), ("other", 5, "s"),
)  # fmt: skip
LEGEND = """\
req/s, p50, p99, CPU us/req: medians over runs; errors, timeouts: summed over runs
vs stdlib: median over rounds of (this server / stdlib-threading in the same round)
spread: (max - min) / median req/s; srv CPU, lg CPU: server and load generator CPU
as % of one core; other: busy time of the server's CPU not spent by the server"""


def table(summaries: Sequence[Summary]) -> str:
    header = "  ".join(
        f"{name:<{w}}" if i == 0 else f"{name:>{w}}" for i, (name, w, _) in enumerate(COLUMNS)
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        spread = percent_text((s.rps_max - s.rps_min) / s.rps) if s.rps else "-"
        values: tuple[Any, ...] = (
            s.server, s.clients, s.rps, ratio_text(s.rps_ratio), spread, s.p50_ms, s.p99_ms,
            s.errors, s.timeouts, s.cpu_us_per_request, ratio_text(s.cpu_ratio),
            percent_text(s.server_cpu_share), percent_text(s.loadgen_cpu_share),
            percent_text(s.other_cpu_share),
        )  # fmt: skip
        cells = [
            f"{v:<{w}{fmt}}" if i == 0 else f"{v:>{w}{fmt}}"
            for i, (v, (_, w, fmt)) in enumerate(zip(values, COLUMNS, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def notes(summaries: Sequence[Summary]) -> list[str]:
    out = []
    for s in summaries:
        where = f"{s.server} @ {s.clients} clients"
        if s.port_exhaustion:
            out.append(f"{where}: {s.port_exhaustion} connects hit EADDRNOTAVAIL (client ports)")
        if s.clients_with_zero_replies:
            out.append(f"{where}: {s.clients_with_zero_replies} clients got no reply in a run")
        if s.loadgen_cpu_share > 0.9:
            out.append(f"{where}: the load generator used >90% of its CPU; may be the limit")
        if s.other_cpu_share > 0.05:
            out.append(
                f"{where}: other work took {percent_text(s.other_cpu_share)} of the server's CPU"
            )
        if s.noisy_runs:
            out.append(
                f"{where}: {s.noisy_runs} of {s.runs} kept runs still had other work above "
                "--noise-limit on the server's CPU"
            )
    return out


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {**asdict(sample), "cpu_us_per_request": sample.cpu_us_per_request}


def write_results(
    args: argparse.Namespace,
    env: dict[str, Any],
    samples: list[Sample],
    discarded: list[Sample],
    summaries: list[Summary],
) -> Path:
    results: Path = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results / f"compare_stdlib-{stamp}{'-smoke' if args.smoke else ''}.json"
    payload = {
        "command": [sys.executable, *sys.argv],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": env,
        "baseline": BASELINE,
        "summaries": [asdict(s) for s in summaries],
        "samples": [_sample_json(s) for s in samples],
        "discarded_noisy_samples": [_sample_json(s) for s in discarded],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_run_arguments(parser, list(SERVERS))
    parser.add_argument("--clients", default="8,64", help="comma-separated client counts")
    parser.add_argument(
        "--smoke", action="store_true", help="one ~1 s run per scenario; fail on zero requests"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.runs, args.warmup, args.retries = 1.0, 1, 0.0, 0
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--clients takes comma-separated integers, e.g. 8,64")
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if BASELINE not in args.server_names:
        args.server_names.insert(0, BASELINE)  # ratios need the baseline in the same run
    if args.runs < 1 or args.duration <= 0 or not args.client_counts:
        parser.error("--runs >= 1, --duration > 0 and at least one client count are required")
    return args


def run(args: argparse.Namespace) -> tuple[list[Sample], list[Sample], list[Summary]]:
    """Measure every scenario; return the samples kept, those discarded as noisy, summaries."""
    build_loadgen()
    server_cpu, loadgen_cpu = pick_cpus(args.server_cpu, args.loadgen_cpu)
    samples: list[Sample] = []
    discarded: list[Sample] = []
    with ExitStack() as stack:
        servers = [stack.enter_context(running_server(n, server_cpu)) for n in args.server_names]
        for clients in args.client_counts:
            if args.warmup > 0:
                for server in servers:
                    run_loadgen(server, clients=clients, duration=args.warmup,
                                timeout=args.timeout, cpu=loadgen_cpu)  # fmt: skip
            for round_ in range(args.runs):
                # Rotate who goes first so no server always runs right after another.
                k = round_ % len(servers)
                for server in servers[k:] + servers[:k]:
                    sample, noisy = measure_quietly(
                        server, args, clients=clients, round_=round_, cpus=(server_cpu, loadgen_cpu)
                    )
                    samples.append(sample)
                    discarded += noisy
        for server in servers:
            summary = server.log_summary()
            if summary:
                print(f"note: {summary}", file=sys.stderr)

    def of(name: str, clients: int) -> list[Sample]:
        return [s for s in samples if s.server == name and s.clients == clients]

    summaries = [
        Summary.of(of(name, clients), of(BASELINE, clients), args.noise_limit)
        for clients in args.client_counts
        for name in args.server_names
    ]
    return samples, discarded, summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"connect-per-request, {args.runs} run(s) x {args.duration:g} s per scenario, "
        f"server on CPU {args.server_cpu}, load generator on CPU {args.loadgen_cpu}",
        file=sys.stderr,
    )
    try:
        samples, discarded, summaries = run(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = environment()
    print(
        f"\npython {env['python']}, kernel {env['kernel']}, {env['cpu_model']} x{env['cpus']}, "
        f"revision {env['revision'] or '?'}"
    )
    print(
        f"connect-per-request, {args.runs} run(s) x {args.duration:g} s per scenario, "
        f"server on CPU {args.server_cpu}, load generator on CPU {args.loadgen_cpu}"
    )
    print(table(summaries))
    print(LEGEND)
    for note in notes(summaries):
        print(f"note: {note}")
    if discarded:
        print(
            f"note: {len(discarded)} run(s) discarded and repeated: other work took more than "
            f"{args.noise_limit:.0%} of the server's CPU (kept in the JSON)"
        )
    path = write_results(args, env, samples, discarded, summaries)
    print(f"results: {path}")
    empty = [s for s in summaries if s.min_requests == 0]
    if empty:
        for s in empty:
            print(f"smoke: {s.server} @ {s.clients} clients had no successful request")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
