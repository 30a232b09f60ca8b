"""The benchmark suite runs end to end (``bench/suite.py --smoke``).

This checks the harness, not speed: the load generator builds, every server of
every scenario starts (gunicorn and its workers, the runtime's pre-fork
supervisor and its workers included), answers correctly (the load generator
and wrk's script check every reply) and is stopped, the table has a row per
server and scenario with good replies, and every target of the targets
section could be evaluated.  A server the runtime cannot run yet (the
``--reuse-port`` variants, before that flag existed) may be skipped, and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "bench" / "suite.py"
LOADGEN = ROOT / "bench" / "build" / "loadgen"
SERVERS = {
    "connect": {"stdlib-threading", "stdlib-pool8", "stdlib-forking", "runtime-lean",
                "runtime-full", "runtime-forking", "runtime-prefork", "runtime-prefork-reuseport"},
    "keepalive": {"stdlib-threading", "stdlib-pool8", "stdlib-forking", "runtime-default",
                  "runtime-prefork", "runtime-prefork-reuseport"},
    "http": {"stdlib-http", "stdlib-http-nodelay", "runtime-http", "runtime-prefork-http",
             "runtime-prefork-http-reuseport", "runtime-prefork-http-threads", "gunicorn-sync",
             "gunicorn-gthread"},
}  # fmt: skip
CLIENTS = {"connect": {8, 64, 512}, "keepalive": {64}, "http": {64}}
VERDICTS = ("PASS", "FAIL", "n/a", "info")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the load generator uses epoll and /proc"
)


def table_rows(stdout: str) -> dict[tuple[str, str, int], float]:
    """(scenario, server, clients) -> req/s, from the rows of the printed table."""
    rows: dict[tuple[str, str, int], float] = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) > 4 and cells[0] in SERVERS and cells[2].isdigit():
            rows[cells[0], cells[1], int(cells[2])] = float(cells[3])
    return rows


def target_verdicts(stdout: str) -> dict[str, str]:
    """Target label -> verdict, from the lines under the targets heading."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("targets (issue 4"))
    verdicts = {}
    for line in lines[start + 2 :]:
        if not line.endswith(VERDICTS):
            break
        label, verdict = line.rsplit(None, 1)
        verdicts[label] = verdict
    return verdicts


@pytest.mark.timeout(240)
def test_smoke_measures_every_server_and_scenario(tmp_path: Path) -> None:
    if shutil.which("gcc") is None and not LOADGEN.exists():
        pytest.skip("gcc is needed to build bench/loadgen.c (Debian: apt-get install gcc)")
    if shutil.which("wrk") is None:
        pytest.skip("wrk drives the HTTP scenario (Debian: apt-get install wrk; make deps)")
    done = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    (result,) = tmp_path.glob("suite-*-smoke.json")
    payload = json.loads(result.read_text())
    skipped = set(payload["skipped_servers"])
    assert skipped <= {"runtime-prefork-reuseport", "runtime-prefork-http-reuseport"}, report
    assert all(f"note: {name} skipped" in done.stdout for name in skipped), report

    rows = table_rows(done.stdout)
    for scenario, servers in SERVERS.items():
        measured = {(server, clients) for s, server, clients in rows if s == scenario}
        expected = {
            (server, clients) for server in servers - skipped for clients in CLIENTS[scenario]
        }
        assert measured == expected, report
    assert all(rps > 0 for rps in rows.values()), report

    verdicts = target_verdicts(done.stdout)
    assert len(verdicts) >= 10, report
    assert "info" in verdicts.values(), report  # e.g. pre-fork against gunicorn gthread
    # The smoke run measures every target (but those of a skipped server).
    missing = [label for label, verdict in verdicts.items() if verdict == "n/a"]
    assert all(any(name in label for name in skipped) for label in missing), report
    assert not any(s["killed"] for s in payload["server_shutdown"].values()), report

    assert len(payload["summaries"]) == len(rows)
    assert all(s["min_requests"] > 0 for s in payload["summaries"])
    assert payload["render"]["families_without_samples"] == []
