"""CPython's own ``test.test_socketserver``, with ``runtime`` standing in for ``socketserver``.

The interpreter running pytest runs its own standard-library suite (so every Python CI
runs, 3.10 to 3.13, is checked against its own suite) in a child process: see
``_cpython_suite.py``, which holds the skip list with each skip's reason. Here we judge
its report: no test fails or errors, only the documented tests are skipped, enough ran,
against this checkout's ``runtime``, and no test left threads or children behind. A
control run against the standard library's own module, nothing skipped, must pass
whole: the harness is sound here and every skipped test could have passed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _cpython_suite import MODULE, SKIPS
from _proc import env

import runtime

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "_cpython_suite.py"
#: The whole suite takes about a second; these bound a hang, not a slow machine.
SUITE_TIMEOUT = 240.0
HANG_DUMP = 200.0  # the runner dumps its threads' stacks and exits before SUITE_TIMEOUT
#: 27 tests on 3.10 to 3.13; fewer than this passing means the suite did not really run.
MIN_PASSED = 20


@dataclass
class Report:
    data: dict[str, Any]
    stdout: str
    stderr: str

    def outcomes(self, *kinds: str) -> dict[str, str]:
        """Test name -> detail (traceback, or skip reason) of the tests with these outcomes."""
        return {
            name: test["detail"]
            for name, test in self.data["tests"].items()
            if test["outcome"] in kinds
        }

    def tail(self) -> str:
        return f"--- runner stderr (last 4000 chars) ---\n{self.stderr[-4000:]}"


def _has_suite() -> bool:
    try:
        return importlib.util.find_spec(MODULE) is not None
    except ImportError:  # no ``test`` package at all
        return False


def _run_suite(work: Path, *options: str) -> Report:
    if not _has_suite():
        pytest.skip(
            f"this Python ({sys.version.split()[0]}) has no {MODULE}: a distribution "
            "without the standard library's test package (Debian: libpython3.X-testsuite)"
        )
    result, out, err = work / "result.json", work / "stdout.txt", work / "stderr.txt"
    # cwd: the suite writes its TESTFN and (3.12+) its Unix socket names relative to it.
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(result), "--hang", str(HANG_DUMP), *options],
            cwd=work, env=env(), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True,  # its forked children go with it on a timeout
        )  # fmt: skip
        try:
            status = proc.wait(timeout=SUITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the suite ran past {SUITE_TIMEOUT}s\n{err.read_text()[-4000:]}")
    report = Report({}, out.read_text(), err.read_text())
    assert status == 0 and result.exists(), (
        f"the runner exited with status {status} without a report\n{report.tail()}"
    )
    report.data = json.loads(result.read_text())
    return report


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The suite against runtime, skip list applied."""
    return _run_suite(tmp_path_factory.mktemp("cpython-suite-runtime"))


@pytest.fixture(scope="module")
def stdlib_suite(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The control: the same run against the standard library's socketserver, no skips."""
    return _run_suite(tmp_path_factory.mktemp("cpython-suite-stdlib"), "--stdlib")


def test_the_suite_ran_against_this_checkouts_runtime(suite: Report) -> None:
    assert suite.data["module_skipped"] is None, (
        f"{MODULE} skipped itself: {suite.data['module_skipped']}"
    )
    assert suite.data["bound_to"] == runtime.__file__, (
        f"{MODULE}'s `import socketserver` bound to {suite.data['bound_to']}"
    )
    passed = suite.outcomes("passed")
    assert len(passed) >= MIN_PASSED, f"only {len(passed)} passed: {sorted(passed)}"


def test_no_cpython_socketserver_test_fails_with_runtime_as_socketserver(suite: Report) -> None:
    bad = suite.outcomes("failed", "error", "unexpected_success")
    assert not bad, (
        f"{len(bad)} of CPython's socketserver tests failed with runtime:\n\n"
        + "\n".join(f"=== {name}\n{detail}" for name, detail in sorted(bad.items()))
        + f"\n{suite.tail()}"
    )


def test_only_the_documented_tests_are_skipped(suite: Report) -> None:
    stale = sorted(set(SKIPS) - set(suite.data["tests"]))
    assert not stale, f"skip-list entries that name no test of this Python's suite: {stale}"
    skipped = suite.outcomes("skipped")
    ours = {name: why for name, why in skipped.items() if name in SKIPS}
    assert ours == SKIPS
    # The suite's own skips (no fork, no AF_UNIX, a PermissionError binding) must not
    # happen where both exist: a server that cannot be built would hide behind one.
    if hasattr(os, "fork") and hasattr(socket, "AF_UNIX"):
        theirs = {name: why for name, why in skipped.items() if name not in SKIPS}
        assert not theirs, f"the suite skipped tests by itself: {theirs}"


def test_each_skip_names_our_test_of_what_it_guards() -> None:
    # A skip gives up a check only where our own test makes it; renaming that test
    # must not leave the skip pointing at nothing.
    for name, why in SKIPS.items():
        found = re.findall(r"(tests/(?:\w+/)?\w+\.py)::(\w+)", why)
        assert found, f"{name}: the reason names none of our tests"
        for path, test in found:
            defined = f"def {test}(" in (ROOT / path).read_text()
            assert defined, f"{name}'s reason names {path}::{test}, which is not there"


def test_no_cpython_test_leaves_threads_or_children_behind(suite: Report) -> None:
    # What regrtest --fail-env-changed reports: threading_cleanup / reap_children.
    assert not suite.data["env_altered"], (
        f"tests that left threads or unreaped children: {suite.data['env_altered']}\n{suite.tail()}"
    )


def test_the_standard_library_passes_the_same_run_skipped_tests_included(
    stdlib_suite: Report,
) -> None:
    # The harness and this machine are sound, and each skipped test is skipped for a
    # difference of runtime's, not because it cannot pass here.
    assert stdlib_suite.data["bound_to"] == socketserver.__file__
    not_passed = {
        name: f"{test['outcome']}: {test['detail']}"
        for name, test in stdlib_suite.data["tests"].items()
        if test["outcome"] != "passed"
    }
    if not (hasattr(os, "fork") and hasattr(socket, "AF_UNIX")):
        not_passed = {n: d for n, d in not_passed.items() if not d.startswith("skipped")}
    assert not not_passed, f"with the standard library itself: {not_passed}"
    assert set(SKIPS) <= set(stdlib_suite.outcomes("passed"))
    assert not stdlib_suite.data["env_altered"]
