"""What the benchmark commands share: paths, the load generator's build, the CPUs
to pin to, a description of the machine, and how numbers are printed.

Server processes and ``/proc`` accounting are in ``_proc.py``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BENCH / "build" / "loadgen"
RESULTS = BENCH / "results"


def add_run_arguments(parser: argparse.ArgumentParser, servers: Sequence[str]) -> None:
    """The options every benchmark command takes: runs, pinning, noise, where results go."""
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--servers", default=",".join(servers), help="comma-separated names")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds, per scenario")
    parser.add_argument("--timeout", type=float, default=2.0, help="reply time-out, seconds")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument(
        "--noise-limit",
        type=float,
        default=0.10,
        help="a run whose server CPU was busier than this share with other work is repeated",
    )
    parser.add_argument("--retries", type=int, default=2, help="repeats of a noisy run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where JSON goes")


class _Measured(Protocol):
    @property
    def other_cpu_seconds(self) -> float | None: ...

    def share(self, cpu_seconds: float | None) -> float: ...


S = TypeVar("S", bound=_Measured)


def measure_quietly(
    take: Callable[[], S],
    describe: Callable[[S, float], str],
    *,
    noise_limit: float,
    retries: int,
) -> tuple[S, list[S]]:
    """One sample from *take*, taken again (up to *retries* times) while other work on
    the server's CPU exceeded *noise_limit*; returns it and the discarded ones.

    Each sample is printed to stderr as *describe(sample, other_share)*.
    """
    discarded: list[S] = []
    while True:
        sample = take()
        other = sample.share(sample.other_cpu_seconds)
        retry = other > noise_limit and len(discarded) < retries
        print(describe(sample, other) + (" (noisy: discarded, again)" if retry else ""),
              file=sys.stderr, flush=True)  # fmt: skip
        if not retry:
            return sample, discarded
        discarded.append(sample)


class HarnessError(Exception):
    """The benchmark itself could not run (build, server start, load generator)."""


def build_loadgen() -> Path:
    """Compile the load generator unless the binary is newer than its source."""
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN
    LOADGEN.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    try:
        subprocess.run(cmd, check=True, timeout=120, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise HarnessError("gcc not found: it is needed to build bench/loadgen.c") from exc
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"building the load generator failed:\n{exc.stderr}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError("building the load generator timed out") from exc
    return LOADGEN


def pick_cpus(server_cpu: int, loadgen_cpu: int) -> tuple[int | None, int | None]:
    """The CPUs to pin to, or (None, None) when this process may not use both."""
    allowed = os.sched_getaffinity(0)
    if server_cpu == loadgen_cpu or not {server_cpu, loadgen_cpu} <= allowed:
        print(
            f"warning: CPUs {server_cpu} and {loadgen_cpu} are not both available "
            f"(allowed: {sorted(allowed)}); running unpinned",
            file=sys.stderr,
        )
        return None, None
    return server_cpu, loadgen_cpu


def environment() -> dict[str, Any]:
    """Python, kernel, CPU model and git revision, for the results."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {
        "revision": revision,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
    }


def median(values: Sequence[float]) -> float:
    """Median of the values that are numbers (NaN: no data)."""
    present = [v for v in values if not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def ratio_text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def percent_text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.0f}%"
