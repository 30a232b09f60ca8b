"""The admin status page at ``/``: its JSON, its numbers, and the page in a real browser.

The browser test drives Debian's Chromium (headless, through chromedriver):
the page must load without a console error (a CSP violation, a failed fetch,
a script error all count), and show the numbers the server really has after
a known number of requests.
"""

from __future__ import annotations

import http.client
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
    # (a second past each boundary: (start + 60) - (start + 30) can be a hair under 30 in
    # floating point, depending on the clock's value: the CI failure on 3.12)
    start = recent._slice_started
    recent.rotate(start + 31)
    recent.observe("s", _record(0.004), 0.004)
    assert [r["duration_ms"] for r in recent.slowest()] == [9.0, 8.0, 7.0]
    recent.rotate(start + 62)
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


def _settled(doc: dict[str, Any], requests: int) -> bool:
    """Whether *doc* has counted *requests* requests and none is still in flight."""
    return bool(doc["totals"]["requests"] == requests
                and all(s["in_flight"] == 0 for s in doc["servers"]))  # fmt: skip


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
        # A request is counted first and leaves "in flight" last (after the recent
        # requests and its access line): wait for both, or a reader can catch the
        # last one counted but not yet in the slowest list, or still in flight.
        poll(lambda: _settled(json.loads(rt.get("/status.json")[2]), OK + FAILED + 1),
             what="the status document to count every request, none in flight")  # fmt: skip
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
        "client_closed": 0, "timed_out": 0, "slow": 0, "watchdog_timed_out": 0,
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


# The page redraws its tables and charts on every refresh (every 200 ms here), so
# a WebElement found in one draw goes stale in the next.  The test reads the page
# through this one script instead: it runs between two draws (the page's script
# is single-threaded) and returns plain data, so everything read is from one draw.
_PAGE = """
const text = node => (node ? node.textContent : null);
const values = {};
for (const node of document.querySelectorAll("[id]")) {
  if (node.dataset.value !== undefined) values[node.id] = node.dataset.value;
}
const rows = selector => [...document.querySelectorAll(selector)];
const section = document.getElementById("workers-section");
return {
  loaded: Number(document.body.dataset.loaded || 0),
  values: values,
  state: text(document.getElementById("state")),
  ready: text(document.getElementById("ready")),
  slowest: rows("#slowest tbody tr").map(tr => ({
    trace_id: tr.getAttribute("data-trace-id"), text: tr.innerText,
    trace: text(tr.querySelector(".trace")), duration: text(tr.querySelector(".duration")),
  })),
  slowest_text: document.querySelector("#slowest tbody").innerText,
  errors: rows("#errors tbody tr").map(tr => ({
    error_type: text(tr.querySelector(".error-type")), text: tr.innerText,
  })),
  injected: document.getElementById("injected") !== null,
  charts: Object.fromEntries(["chart-rate", "chart-latency"].map(id => [
    id, rows("#" + id + " path.line").map(path => Number(path.dataset.points)),
  ])),
  workers_shown: !section.hidden && section.getClientRects().length > 0,
  workers: rows("#workers tbody tr[data-worker]").map(tr => ({
    worker: tr.getAttribute("data-worker"), state: tr.cells[3].textContent,
  })),
};
"""


def _page(driver: Any) -> dict[str, Any]:
    """What the page shows now, read in one go (see ``_PAGE``)."""
    return dict(driver.execute_script(_PAGE))


def _console_problems(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def test_page_shows_the_server_s_numbers_without_console_errors(
    served: dict[str, Any], browser: Any
) -> None:
    rt: RuntimeProcess = served["rt"]
    browser.get(rt.admin + "/?refresh=200")
    poll(lambda: _page(browser)["values"].get("total-requests") == str(OK + FAILED + 1),
         timeout=20, what="the page to show the request count")  # fmt: skip
    # Several refreshes later (each fetch of /status.json is admin traffic, never counted):
    loads = _page(browser)["loaded"]
    page: dict[str, Any] = {}

    def refreshed() -> bool:
        page.update(_page(browser))
        return bool(page["loaded"] >= loads + 3)

    poll(refreshed, what="three more refreshes")
    values = page["values"]
    assert values["total-requests"] == str(OK + FAILED + 1)
    assert values["total-ok"] == str(OK + 1)
    assert values["total-error"] == str(FAILED)
    assert values["total-rejected"] == "0"
    assert values["total-client_closed"] == "0" and values["total-timed_out"] == "0"
    assert values["workers-max"] == "128"
    assert values["in-flight"] == "0"
    assert page["state"] == "serving"
    assert page["ready"] == "ready"

    # The slowest request: the slow one, with the trace id its access line has.
    first = page["slowest"][0]
    page_trace_id = first["trace_id"]
    assert served["slow_client"] in first["text"]
    assert first["trace"] == page_trace_id
    duration = first["duration"]
    assert duration.endswith(" ms") and 400 <= float(duration.split()[0]) < 5000
    served["page_trace_id"] = page_trace_id

    # Errors, with the handler's message as text, not markup.
    errors = page["errors"]
    assert len(errors) == FAILED
    assert all(row["error_type"] == "ValueError" for row in errors)
    assert StatusHandler.MESSAGE in errors[0]["text"]
    assert page["injected"] is False

    # Both charts drew their lines.
    for chart, lines in (("chart-rate", 2), ("chart-latency", 3)):
        points = page["charts"][chart]
        assert len(points) == lines
        assert points[0] >= 1

    assert _console_problems(browser) == []


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

        def doc() -> dict[str, Any]:
            return dict(json.loads(rt.get("/status.json")[2]))

        # /readyz turns 200 with the first ready worker; the other may still be
        # booting, so wait (through the admin port) until both say ready.
        poll(lambda: [w["state"] for w in doc().get("workers", [])] == ["ready", "ready"],
             timeout=20, what="both workers to report ready")  # fmt: skip
        for _ in range(4):
            _request(rt.address, b"hello")
        _request(rt.address, b"fail")

        status: dict[str, Any] = {}

        def counted() -> bool:  # the counters, then each worker's own count
            status.clear()
            status.update(doc())
            return bool(status["totals"]["requests"] == 5
                        and sum(w["handled"] for w in status.get("workers", [])) == 5)  # fmt: skip

        poll(counted, what="the workers' requests summed")
        assert status["totals"]["ok"] == 4 and status["totals"]["error"] == 1
        assert status["servers"][0]["mode"] == "prefork"
        assert status["servers"][0]["workers_max"] == 2  # two sync workers
        workers = status["workers"]
        assert sorted(w["worker"] for w in workers) == [0, 1]
        assert {w["state"] for w in workers} == {"ready"}
        assert sum(w["handled"] for w in workers) == 5
        assert status["recent"] is False and status["slowest"] == []

        browser.get(rt.admin + "/?refresh=200")
        page: dict[str, Any] = {}

        def shown() -> bool:
            page.update(_page(browser))
            return bool(page["values"].get("total-requests") == "5")

        poll(shown, timeout=20, what="the page's total")
        assert sorted(w["worker"] for w in page["workers"]) == ["0", "1"]
        assert {w["state"] for w in page["workers"]} == {"ready"}
        assert page["workers_shown"] is True
        assert "pre-fork" in page["slowest_text"]
        assert page["values"]["workers-max"] == "2"
        assert _console_problems(browser) == []
    finally:
        rt.close()


_ROUTES = """
return [...document.querySelectorAll("#routes tbody tr")].map(
  tr => [...tr.cells].slice(0, 5).map(td => td.textContent));
"""


def test_page_shows_http_routes_and_status_codes(browser: Any) -> None:
    """HTTP requests by route and status: the route the handler named, never the raw path."""
    rt = RuntimeProcess("http_hello", "--log-format", "json", "--drain-delay", "0")
    try:
        conn = http.client.HTTPConnection(*rt.address, timeout=10)
        for path, status in (("/", 200), ("/items/1", 200), ("/items/2", 200), ("/error", 500),
                             ("/nope", 404)):  # fmt: skip
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == status
        conn.close()
        browser.get(rt.admin + "/?refresh=200")
        expected = sorted([
            ["http_hello", "GET", "/items/{id}", "200", "2"],
            ["http_hello", "GET", "/", "200", "1"],
            ["http_hello", "GET", "/error", "500", "1"],
            ["http_hello", "GET", "(no route)", "404", "1"],
        ])  # fmt: skip
        shown: list[list[str]] = []

        def routes_shown() -> bool:
            shown[:] = sorted(browser.execute_script(_ROUTES))
            return shown == expected

        poll(routes_shown, timeout=20, what=f"the routes table to show {expected} ({shown})")
        assert _console_problems(browser) == []
    finally:
        rt.close()
