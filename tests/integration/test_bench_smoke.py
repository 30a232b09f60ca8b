"""The benchmark harness runs end to end (``bench/compare_stdlib.py --smoke``).

This checks the harness, not speed: the load generator builds, every server
starts, answers correctly and is stopped, and the table has a row per server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPARE = ROOT / "bench" / "compare_stdlib.py"
BASELINE = "stdlib-threading"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the load generator uses epoll and /proc"
)


def table_rows(stdout: str) -> dict[tuple[str, int], float]:
    """(server, clients) -> req/s, from the rows of the printed table."""
    rows: dict[tuple[str, int], float] = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) > 3 and cells[0].startswith(("stdlib-", "runtime-")):
            rows[cells[0], int(cells[1])] = float(cells[2])
    return rows


@pytest.mark.timeout(150)
def test_smoke_measures_stdlib_and_runtime(tmp_path: Path) -> None:
    if shutil.which("gcc") is None and not (ROOT / "bench" / "build" / "loadgen").exists():
        pytest.skip("gcc is needed to build bench/loadgen.c")
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--smoke", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    rows = table_rows(done.stdout)
    servers = {server for server, _ in rows}
    assert BASELINE in servers, done.stdout
    assert {"runtime-threading", "runtime-threading-notel"} <= servers, done.stdout
    assert len(rows) == 2 * len(servers), done.stdout  # every server at 8 and 64 clients
    assert {clients for _, clients in rows} == {8, 64}, done.stdout
    assert all(rps > 0 for rps in rows.values()), done.stdout

    (result,) = tmp_path.glob("compare_stdlib-*-smoke.json")
    summaries = json.loads(result.read_text())["summaries"]
    assert len(summaries) == len(rows)
    assert all(s["min_requests"] > 0 for s in summaries)
