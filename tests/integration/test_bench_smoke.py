"""``make bench`` runs end to end (its command, with ``--smoke``).

This checks the harness, not speed: the load generator builds, the runtime's
ThreadingTCPServer variants and the standard library's start, answer correctly
and are stopped, and the table has a row per server and client count.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "bench" / "suite.py"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the load generator uses epoll and /proc"
)


def bench_servers() -> list[str]:
    """The servers `make bench` runs (the Makefile's BENCH_SERVERS)."""
    found = re.search(r"^BENCH_SERVERS = (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile names the servers of make bench"
    return found.group(1).split(",")


def table_rows(stdout: str) -> dict[tuple[str, int], float]:
    """(server, clients) -> req/s, from the connect rows of the printed table."""
    rows: dict[tuple[str, int], float] = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) > 4 and cells[0] == "connect" and cells[2].isdigit():
            rows[cells[1], int(cells[2])] = float(cells[3])
    return rows


@pytest.mark.timeout(150)
def test_smoke_measures_stdlib_and_the_runtime_variants(tmp_path: Path) -> None:
    if shutil.which("gcc") is None and not (ROOT / "bench" / "build" / "loadgen").exists():
        pytest.skip("gcc is needed to build bench/loadgen.c")
    servers = bench_servers()
    done = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--scenarios", "connect", "--clients", "8,64",
         "--servers", ",".join(servers), "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    assert {"stdlib-threading", "runtime-threading", "runtime-threading-notel"} <= set(servers)
    rows = table_rows(done.stdout)
    assert set(rows) == {(server, clients) for server in servers for clients in (8, 64)}, report
    assert all(rps > 0 for rps in rows.values()), report
    (result,) = tmp_path.glob("suite-*-smoke.json")
    summaries = json.loads(result.read_text())["summaries"]
    assert len(summaries) == len(rows)
    assert all(s["min_requests"] > 0 for s in summaries)
    # Each variant's ratio is against the standard library's server of the same round.
    assert all(s["baseline"] == "stdlib-threading" for s in summaries
               if s["server"] != "stdlib-threading"), report  # fmt: skip


@pytest.mark.timeout(120)
def test_http_overhead_reports_a_row_per_server() -> None:
    """``bench/http_overhead.py`` serves every request of each row (a short run: the harness,
    not the numbers)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "http_overhead.py"), "--requests", "300",
         "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {"stdlib", "runtime-bare", "runtime-metrics", "runtime-metrics-1%",
                         "runtime-traced"}, done.stdout  # fmt: skip
    assert all(float(cells[0]) > 0 for cells in rows.values()), done.stdout
