"""The admin status page at ``/``: its JSON, its numbers, and the page in a real browser.

The browser test drives Debian's Chromium (headless, through chromedriver):
the page must load without a console error (a CSP violation, a failed fetch,
a script error all count), and show the numbers the server really has after
a known number of requests.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from _proc import RuntimeProcess, poll
from handlers import StatusHandler

from runtime.status import quantile
from runtime.telemetry.api import RequestRecord
from runtime.telemetry.recent import RecentRequests

INF = float("inf")


# -- the numbers -----------------------------------------------------------------


def test_quantile_interpolates_like_histogram_quantile() -> None:
    bounds = (0.1, 0.2, 0.4, INF)
    # 10 in (0, 0.1], 10 in (0.1, 0.2], none above
    assert quantile(0.5, bounds, (10, 20, 20, 20)) == pytest.approx(0.1)
    assert quantile(0.75, bounds, (10, 20, 20, 20)) == pytest.approx(0.15)
    assert quantile(0.25, bounds, (10, 20, 20, 20)) == pytest.approx(0.05)
    # the rank falls in +Inf: Prometheus answers the highest finite bound
    assert quantile(0.99, bounds, (0, 0, 1, 10)) == pytest.approx(0.4)
    assert quantile(0.5, bounds, (0, 0, 0, 0)) is None
    assert quantile(0.5, bounds, ()) is None


def _record(seconds: float, error: BaseException | None = None) -> RequestRecord:
    record = RequestRecord(None, ("127.0.0.1", 40000), 100.0, 1_000_000_000)
    record.hooks.append(("handle", 100.0, 100.0 + seconds))
    if error is not None:
        try:
            raise error
        except type(error) as exc:
            record.fail("handle", exc)
    return record


def test_recent_keeps_the_slowest_of_the_window_and_the_latest_errors() -> None:
    recent = RecentRequests(keep=3, window=60.0, slices=2, errors=2)
    for ms in (5, 1, 9, 3, 7, 2, 8):
        recent.observe("s", _record(ms / 1000), ms / 1000)
    assert [r["duration_ms"] for r in recent.slowest()] == [9.0, 8.0, 7.0]
    assert recent.slowest()[0]["hooks"] == [{"hook": "handle", "start_ms": 0.0, "ms": 9.0}]
    for n in range(3):
        recent.observe("s", _record(0.001, ValueError(f"boom {n}")), 0.001)
    errors = recent.errors()
    assert [e["message"] for e in errors] == ["boom 2", "boom 1"]  # newest first, bounded
    assert errors[0]["error_type"] == "ValueError" and errors[0]["hook"] == "handle"
    assert errors[0]["where"].endswith(" in _record")
    # Two rotations later the first slice has left the window.
    start = recent._slice_started
    recent.rotate(start + 30)
    recent.observe("s", _record(0.004), 0.004)
    assert [r["duration_ms"] for r in recent.slowest()] == [9.0, 8.0, 7.0]
    recent.rotate(start + 60)
    assert [r["duration_ms"] for r in recent.slowest()] == [4.0]


# -- the document, from a real process --------------------------------------------


def _request(address: tuple[str, int], line: bytes) -> tuple[str, int]:
    """One request; returns the client's own address (as the server logs it)."""
    with socket.create_connection(address, timeout=10) as sock:
        host, port = sock.getsockname()[:2]
        sock.sendall(line + b"\n")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    return host, port


OK, FAILED = 5, 2


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Any]]:
    """A runtime with traces on, after OK ok requests, FAILED failures and one slow request.

    Yields the process and what the test needs to check the page against;
    the access log (read at exit) gives each request's trace id.
    """
    rt = RuntimeProcess(
        "handlers:StatusHandler", "--log-format", "json",
        extra_env={"OTEL_TRACES_EXPORTER": "console"},
    )  # fmt: skip
    try:
        for _ in range(OK):
            _request(rt.address, b"hello")
        for _ in range(FAILED):
            _request(rt.address, b"fail")
        slow_client = _request(rt.address, b"slow")
        poll(lambda: json.loads(rt.get("/status.json")[2])["totals"]["requests"] == OK + FAILED + 1,
             what="the status document to count every request")  # fmt: skip
        info: dict[str, Any] = {"rt": rt, "slow_client": "{}:{}".format(*slow_client)}
        yield info
    finally:
        rt.close()


def _access_lines(rt: RuntimeProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in rt.wait()[1].splitlines()
            if line.startswith("{") and '"event": "request"' in line]  # fmt: skip


def test_status_json_has_the_server_s_numbers(served: dict[str, Any]) -> None:
    rt: RuntimeProcess = served["rt"]
    status, ctype, body = rt.get("/status.json")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["state"] == "serving" and doc["ready"] and doc["live"]
    assert doc["totals"] == {
        "requests": OK + FAILED + 1, "ok": OK + 1, "error": FAILED, "rejected": 0,
        "slow": 0, "timed_out": 0,
    }  # fmt: skip
    (server,) = doc["servers"]
    assert server["mode"] == "thread" and server["workers_max"] == 128
    assert server["in_flight"] == 0 and server["queue_depth"] == 0
    assert server["address"] == "{}:{}".format(*rt.address)
    slowest = doc["slowest"][0]
    assert slowest["client"] == served["slow_client"]
    assert 400 <= slowest["duration_ms"] < 5000
    assert {h["hook"] for h in slowest["hooks"]} >= {"get_request", "handle", "shutdown_request"}
    assert len(slowest["trace_id"]) == 32
    assert [e["error_type"] for e in doc["errors"]] == ["ValueError"] * FAILED
    assert doc["errors"][0]["message"] == StatusHandler.MESSAGE
    assert "handlers.py" in doc["errors"][0]["where"]
    # History: at least the point from the first sample to now; its requests add up.
    assert sum(p["requests"] for p in doc["history"]) == OK + FAILED + 1
    assert doc["window"]["p99_ms"] >= doc["window"]["p50_ms"] > 0


def test_static_files_have_a_strict_policy(served: dict[str, Any]) -> None:
    rt: RuntimeProcess = served["rt"]
    import urllib.request

    for path, kind in (("/", "text/html"), ("/static/status.js", "text/javascript"),
                       ("/static/status.css", "text/css")):  # fmt: skip
        with urllib.request.urlopen(rt.admin + path, timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith(kind)
            csp = reply.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            body = reply.read().decode()
        # Nothing from any other origin (the SVG namespace is a name, not a fetch).
        hosts = set(re.findall(r"(?:https?:)?//([\w-]+(?:\.[\w-]+)+)", body))
        assert hosts <= {"www.w3.org"}, hosts


# -- the page, in Chromium --------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make deps)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="status-page-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _value(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).get_attribute("data-value") or "")


def test_page_shows_the_server_s_numbers_without_console_errors(
    served: dict[str, Any], browser: Any
) -> None:
    rt: RuntimeProcess = served["rt"]
    browser.get(rt.admin + "/?refresh=200")
    poll(lambda: _value(browser, "total-requests") == str(OK + FAILED + 1), timeout=20,
         what="the page to show the request count")  # fmt: skip
    # Several refreshes later (each fetch of /status.json is admin traffic, never counted):
    loads = int(browser.find_element("tag name", "body").get_attribute("data-loaded"))
    poll(lambda: int(browser.find_element("tag name", "body").get_attribute("data-loaded"))
         >= loads + 3, what="three more refreshes")  # fmt: skip
    assert _value(browser, "total-requests") == str(OK + FAILED + 1)
    assert _value(browser, "total-ok") == str(OK + 1)
    assert _value(browser, "total-error") == str(FAILED)
    assert _value(browser, "total-rejected") == "0"
    assert _value(browser, "workers-max") == "128"
    assert _value(browser, "in-flight") == "0"
    assert browser.find_element("id", "state").text == "serving"
    assert browser.find_element("id", "ready").text == "ready"

    # The slowest request: the slow one, with the trace id its access line has.
    first = browser.find_element("css selector", "#slowest tbody tr")
    page_trace_id = first.get_attribute("data-trace-id")
    assert served["slow_client"] in first.text
    assert first.find_element("css selector", ".trace").text == page_trace_id
    duration = first.find_element("css selector", ".duration").text
    assert duration.endswith(" ms") and 400 <= float(duration.split()[0]) < 5000
    served["page_trace_id"] = page_trace_id

    # Errors, with the handler's message as text, not markup.
    errors = browser.find_elements("css selector", "#errors tbody tr")
    assert len(errors) == FAILED
    assert all(row.find_element("css selector", ".error-type").text == "ValueError"
               for row in errors)  # fmt: skip
    assert StatusHandler.MESSAGE in errors[0].text
    assert browser.find_elements("id", "injected") == []

    # Both charts drew their lines.
    for chart, lines in (("chart-rate", 2), ("chart-latency", 3)):
        paths = browser.find_elements("css selector", f"#{chart} path.line")
        assert len(paths) == lines
        assert int(paths[0].get_attribute("data-points")) >= 1

    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []


def test_trace_ids_on_the_page_are_the_requests_own(served: dict[str, Any]) -> None:
    """Stops the server (last test of the module) and checks the access log."""
    rt: RuntimeProcess = served["rt"]
    slowest = json.loads(rt.get("/status.json")[2])["slowest"][0]
    rt.signal(signal.SIGTERM)
    assert rt.proc.wait(timeout=30) == 0
    lines = {line["client"]: line for line in _access_lines(rt)}
    assert lines[served["slow_client"]]["trace_id"] == slowest["trace_id"]
    if "page_trace_id" in served:
        assert served["page_trace_id"] == slowest["trace_id"]


def test_prefork_page_shows_the_pool_its_workers_and_their_summed_totals(browser: Any) -> None:
    """Pre-fork: totals and charts from the workers' merged counters, one row per worker."""
    rt = RuntimeProcess(
        "handlers:StatusHandler", "--mode", "prefork", "--workers", "2", "--log-format", "json"
    )
    try:
        for _ in range(4):
            _request(rt.address, b"hello")
        _request(rt.address, b"fail")

        def doc() -> dict[str, Any]:
            return dict(json.loads(rt.get("/status.json")[2]))

        def counted(status: dict[str, Any]) -> bool:  # the counters, then each worker's own count
            return bool(status["totals"]["requests"] == 5
                        and sum(w["handled"] for w in status.get("workers", [])) == 5)  # fmt: skip

        poll(lambda: counted(doc()), what="the workers' requests summed")
        status = doc()
        assert status["totals"]["ok"] == 4 and status["totals"]["error"] == 1
        assert status["servers"][0]["mode"] == "prefork"
        assert status["servers"][0]["workers_max"] == 2  # two sync workers
        workers = status["workers"]
        assert sorted(w["worker"] for w in workers) == [0, 1]
        assert {w["state"] for w in workers} == {"ready"}
        assert sum(w["handled"] for w in workers) == 5
        assert status["recent"] is False and status["slowest"] == []

        browser.get(rt.admin + "/?refresh=200")
        poll(lambda: _value(browser, "total-requests") == "5", timeout=20, what="the page's total")
        rows = browser.find_elements("css selector", "#workers tbody tr")
        assert sorted(r.get_attribute("data-worker") for r in rows) == ["0", "1"]
        assert browser.find_element("id", "workers-section").is_displayed()
        assert "pre-fork" in browser.find_element("css selector", "#slowest tbody").text
        assert _value(browser, "workers-max") == "2"
        problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert problems == []
    finally:
        rt.close()
