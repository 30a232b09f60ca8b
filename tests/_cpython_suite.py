"""Run CPython's own ``test.test_socketserver`` with ``runtime`` standing in for ``socketserver``.

Run as a script, in a fresh interpreter of its own (``test_cpython_socketserver.py`` does)::

    python tests/_cpython_suite.py RESULT.json [--hang SECONDS] [--stdlib]

It does for the whole suite what a user's ``import runtime as socketserver`` does:
``sys.modules["socketserver"] = runtime`` before the suite is imported, so the suite's
``import socketserver`` binds to ``runtime`` (checked: nothing runs if it did not). The
tests in :data:`SKIPS` are skipped with their reason; every other test runs, with every
resource enabled (``test.support``'s default outside regrtest: the suite requires
"network", which is 127.0.0.1 only), as ``python -m test -u network test_socketserver``
would run it. ``--stdlib`` is the control: the same run against the standard library's
own module, nothing skipped. The report goes to RESULT.json (see :func:`main`); the
suite's chatter and the runtime's log lines go to stdout/stderr.

Its own process, because the swap of ``sys.modules`` and the suite's global state
(threads, signal handlers, forked children, ``test.support`` flags) must never reach
the caller's. Like regrtest with ``--fail-env-changed``, a test that leaves threads
running or children unreaped is reported: ``environment_altered`` is reset before each
test and ``threading_helper.threading_cleanup`` / ``reap_children`` run after it (after a
garbage collection, as regrtest collects before it compares).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import sys
import unittest
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULE = "test.test_socketserver"

#: CPython tests left out, by ``Class.method``, each with why: only tests of the standard
#: module's private attributes or of its identity as a module, never of behaviour. What
#: each one guards, as a user relies on it, is checked in our own tests (named here).
SKIPS: dict[str, str] = {
    "MiscTestCase.test_threads_reaped": (
        "inspects the standard library's private ThreadingMixIn._threads list (len() of it); "
        "runtime runs requests on a bounded pool of reused threads and keeps no such list. "
        "The behaviour it guards (finished requests' threads are not kept: bpo-37193) is "
        "tests/unit/test_pools.py::test_flood_never_runs_more_than_max_children_handlers_and_"
        "reuses_threads"
    ),
    "MiscTestCase.test_all": (
        "checks the standard module's own bookkeeping: every public name whose __module__ "
        "is 'socketserver' is in __all__. runtime's classes live in runtime.* (subclasses, "
        "so __module__ is not 'socketserver') and its __all__ adds its own API. What a user "
        "relies on (every name of socketserver.__all__ is in runtime, a subclass of its "
        "namesake) is tests/unit/test_stdlib_compat.py::"
        "test_every_standard_name_exists_and_subclasses_its_namesake"
    ),
}


def _support() -> Any:
    # test.support has no type stubs; imported only in the runner's own process.
    return importlib.import_module("test.support")


def _threading_helper() -> Any:
    return importlib.import_module("test.support.threading_helper")


def name_of(test: unittest.TestCase) -> str:
    """``Class.method`` for a test (the key of :data:`SKIPS`); the id for anything else."""
    method = getattr(test, "_testMethodName", None)
    return f"{type(test).__name__}.{method}" if method else test.id()


_RANK = {
    "passed": 0, "skipped": 0, "expected_failure": 0,
    "unexpected_success": 1, "failed": 2, "error": 3,
}  # fmt: skip


class _Collect(unittest.TestResult):
    """Every test's outcome by name, with the traceback of what went wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, dict[str, str]] = {}
        self.env_altered: list[str] = []
        self._threads: Any = None

    def _set(self, test: Any, outcome: str, detail: str = "") -> None:
        # A test can report more than once (each failed subtest): keep the worst outcome.
        entry = self.outcomes.setdefault(name_of(test), {"outcome": outcome, "detail": ""})
        if _RANK[outcome] > _RANK[entry["outcome"]]:
            entry["outcome"] = outcome
        entry["detail"] = "\n".join(d for d in (entry["detail"], detail) if d)

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        _support().environment_altered = False
        self._threads = _threading_helper().threading_setup()

    def stopTest(self, test: unittest.TestCase) -> None:
        # As regrtest before it compares: what only a reference cycle still holds is not
        # left behind (3.10's threading_cleanup flags a dangling thread before collecting).
        _support().gc_collect()
        _threading_helper().threading_cleanup(*self._threads)
        _support().reap_children()
        if _support().environment_altered:
            self.env_altered.append(name_of(test))
        super().stopTest(test)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._set(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._set(test, "failed", self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._set(test, "error", self.errors[-1][1])

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._set(test, "skipped", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._set(test, "expected_failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._set(test, "unexpected_success")

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            detail = (self.failures if failed else self.errors)[-1][1]
            self._set(test, "failed" if failed else "error", f"{subtest.id()}\n{detail}")


def _tests(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    found: list[unittest.TestCase] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            found += _tests(item)
        else:
            found.append(item)
    return found


def _skip(test: unittest.TestCase, reason: str) -> None:
    # An instance attribute shadows the method: unittest finds __unittest_skip__ on it.
    method = getattr(test, test._testMethodName)
    setattr(test, test._testMethodName, unittest.skip(reason)(method))


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write its report (JSON) to RESULT; exit 0 once it is written.

    The report: ``{"python", "bound_to", "module_skipped", "tests", "env_altered"}``.
    ``bound_to`` is the file of the module the suite's ``socketserver`` name is bound to;
    ``module_skipped`` the reason if the suite skipped itself at import; ``tests`` maps
    ``Class.method`` to ``{"outcome", "detail"}``, outcome one of passed, failed, error,
    skipped (detail: the reason), expected_failure, unexpected_success, detail otherwise
    the traceback; ``env_altered`` the tests that left threads or unreaped children.
    Exit status 0 whatever the tests did (the caller judges), 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("result", type=Path, help="where to write the report (JSON)")
    parser.add_argument(
        "--hang", type=float, default=0.0, metavar="SECONDS",
        help="after SECONDS, dump every thread's stack to stderr and exit 1 (0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--stdlib", action="store_true",
        help="control run: the standard library's own socketserver, nothing skipped",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.hang > 0:
        # A hang shows where it is stuck, and ends, before the caller's timeout.
        faulthandler.dump_traceback_later(args.hang, exit=True)
    if args.stdlib:
        subject = importlib.import_module("socketserver")
        skips: dict[str, str] = {}
    else:
        sys.path.insert(0, str(ROOT))  # the checkout this file is in, not an installed copy
        subject = importlib.import_module("runtime")
        sys.modules["socketserver"] = subject
        skips = SKIPS
    _support().verbose = False  # as regrtest without -v: no "creating server" chatter
    report: dict[str, Any] = {
        "python": sys.version,
        "bound_to": None,
        "module_skipped": None,
        "tests": {},
        "env_altered": [],
    }
    parent = os.getpid()
    try:
        try:
            module = importlib.import_module(MODULE)
        except unittest.SkipTest as skipped:  # test.support.requires(...) at import time
            report["module_skipped"] = str(skipped)
        else:
            report["bound_to"] = module.socketserver.__file__
            if module.socketserver is subject:  # else the report says what it was bound to
                result = _run(module, skips)
                report["tests"] = result.outcomes
                report["env_altered"] = result.env_altered
    finally:
        if os.getpid() != parent:  # a forked child that came back up here: never report
            os._exit(70)
    args.result.write_text(json.dumps(report, indent=1))
    return 0


def _run(module: Any, skips: dict[str, str]) -> _Collect:
    loader = unittest.TestLoader()
    tests = _tests(loader.loadTestsFromModule(module))
    if loader.errors:  # regrtest refuses to run a module whose tests do not all load
        raise RuntimeError("errors while loading tests:\n" + "\n".join(map(str, loader.errors)))
    for test in tests:
        reason = skips.get(name_of(test))
        if reason is not None:
            _skip(test, reason)
    result = _Collect()
    unittest.TestSuite(tests).run(result)
    return result


if __name__ == "__main__":
    sys.exit(main())
