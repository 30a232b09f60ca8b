"""Grafana dashboards of socketserver-runtime, as code (plain Python, no grafanalib).

    python dashboards/generate.py           # (re)write dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if a committed file differs

Every panel and annotation queries the ``$datasource`` variable (type datasource, so
the JSON imports into any Grafana without an ``__inputs`` section and can be provisioned
from a file as is). ``$server`` and ``$instance`` filter every query: ``$instance`` alone
filters the series that carry no ``server`` label (``process_*``, ``up`` and the pre-fork
supervisor's ``socketserver_worker_*``); it lists only instances of the chosen servers.
Latency panels show exemplars (the request's ``trace_id``) when Prometheus stores them
(``--enable-feature=exemplar-storage``) and the runtime traces.

The layout is data: rows of panels, each panel a width and a height on Grafana's
24-column grid; :class:`Layout` places them left to right and wraps.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARDS", "overview", "render", "main"]

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
#: Label matchers of every socketserver_* query.
SEL = 'server=~"$server", instance=~"$instance"'
#: Label matchers of process_*, up and socketserver_worker_* (no server label).
PROC = 'instance=~"$instance"'
#: Pre-fork: the runtime's default --worker-timeout (a worker whose heartbeat is older is
#: aborted and replaced), and the heartbeat age of the SocketserverWorkerHung alert.
WORKER_TIMEOUT = 30
WORKER_HUNG = 10
RATE = "$__rate_interval"
RANGE = "$__range"
REFIDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# -- targets and panels ------------------------------------------------------------------


def target(
    expr: str, legend: str = "", *, exemplar: bool = False, instant: bool = False,
    table: bool = False,
) -> Json:  # fmt: skip
    """One Prometheus query of a panel; ``refId`` is assigned by the panel."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "exemplar": exemplar,
        "format": "table" if table else "time_series",
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def quantiles(metric: str, by: str, legend: str, qs: Sequence[float]) -> list[Json]:
    """``histogram_quantile`` targets of *metric* for each quantile, exemplars on."""
    group = f"{by}, le" if by else "le"
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}".strip(),
            exemplar=True,
        )
        for q in qs
    ]


def _panel(
    kind: str, title: str, description: str, targets: Iterable[Json], size: tuple[int, int]
) -> Json:
    numbered = [{**t, "refId": REFIDS[i]} for i, t in enumerate(targets)]
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": numbered,
        "gridPos": {"w": size[0], "h": size[1]},
    }


def timeseries(
    title: str, description: str, targets: Iterable[Json], unit: str, *,
    size: tuple[int, int] = (8, 8), stack: bool = False, max_value: float | None = None,
    overrides: list[Json] | None = None,
    thresholds: Sequence[tuple[float | None, str]] | None = None,
) -> Json:  # fmt: skip
    """A time series panel; *thresholds* ``(value, colour)`` are drawn as dashed lines."""
    custom: Json = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 30 if stack else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: Json = {"unit": unit, "min": 0, "custom": custom}
    if max_value is not None:
        defaults["max"] = max_value
    if thresholds is not None:
        custom["thresholdsStyle"] = {"mode": "dashed"}
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"value": value, "color": color} for value, color in thresholds],
        }
    panel = _panel("timeseries", title, description, targets, size)
    panel["fieldConfig"] = {"defaults": defaults, "overrides": overrides or []}
    panel["options"] = {
        "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                   "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }  # fmt: skip
    return panel


def stat(
    title: str, description: str, targets: Iterable[Json], unit: str, *,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    size: tuple[int, int] = (4, 4), decimals: int | None = None,
) -> Json:  # fmt: skip
    defaults: Json = {
        "unit": unit,
        "thresholds": {
            "mode": "absolute",
            "steps": [{"value": value, "color": color} for value, color in steps],
        },
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    panel = _panel("stat", title, description, targets, size)
    panel["fieldConfig"] = {"defaults": defaults, "overrides": []}
    panel["options"] = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "textMode": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    }
    return panel


#: Values of the lifecycle-state expression below, and their colours.
LIFECYCLE = (("starting", 1, "blue"), ("serving", 2, "green"), ("draining", 3, "orange"),
             ("stopped", 4, "red"))  # fmt: skip


def lifecycle_timeline(size: tuple[int, int]) -> Json:
    # One number per instance (1 starting .. 4 stopped), mapped back to names: the gauge
    # has one 0/1 series per state, which a state timeline cannot show as one row.
    expr = "\n+ ".join(
        f'max by (instance, server) (socketserver_lifecycle_state{{{SEL}, state="{name}"}}) * {n}'
        for name, n, _ in LIFECYCLE
    )
    panel = _panel(
        "state-timeline", "Lifecycle state",
        "State of each instance: starting, serving, draining (SIGTERM received; /readyz is "
        "503, still serving for drain_delay, then finishing in-flight requests), stopped.",
        [target(expr, "{{instance}} {{server}}")], size,
    )  # fmt: skip
    panel["fieldConfig"] = {
        "defaults": {
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [
                {"value": None, "color": "transparent"},
                *({"value": n, "color": color} for _, n, color in LIFECYCLE),
            ]},
            "mappings": [{"type": "value", "options": {
                str(n): {"text": name, "color": color, "index": n - 1}
                for name, n, color in LIFECYCLE
            }}],
        },
        "overrides": [],
    }  # fmt: skip
    panel["options"] = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.8,
                        "legend": {"showLegend": True, "displayMode": "list",
                                   "placement": "bottom"}}  # fmt: skip
    return panel


def table(title: str, description: str, targets: Iterable[Json], size: tuple[int, int]) -> Json:
    panel = _panel("table", title, description, targets, size)
    panel["fieldConfig"] = {"defaults": {}, "overrides": []}
    panel["options"] = {"showHeader": True, "cellHeight": "sm"}
    panel["transformations"] = [{"id": "organize", "options": {
        "excludeByName": {"Time": True, "Value": True, "__name__": True},
    }}]  # fmt: skip
    return panel


def colours(by_name: dict[str, str]) -> list[Json]:
    """Overrides giving each series named in *by_name* its fixed colour."""
    return [
        {"matcher": {"id": "byName", "options": name},
         "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}]}
        for name, colour in by_name.items()
    ]  # fmt: skip


def dashed(series: str) -> Json:
    """An override drawing the series named *series* as a dashed line, out of the stack."""
    return {
        "matcher": {"id": "byName", "options": series},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        ],
    }


# -- layout --------------------------------------------------------------------------------


class Layout:
    """Place rows and panels on the 24-column grid, left to right, wrapping."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self._x = 0
        self._y = 0
        self._row_height = 0

    def row(self, title: str, *panels: Json) -> None:
        self._newline()
        self._add({"type": "row", "title": title, "collapsed": False, "panels": [],
                   "gridPos": {"w": 24, "h": 1}})  # fmt: skip
        self._newline()
        for panel in panels:
            self._add(panel)

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = 0
        self._row_height = 0

    def _add(self, panel: Json) -> None:
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if self._x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        panel["id"] = len(self.panels) + 1
        self._x += w
        self._row_height = max(self._row_height, h)
        self.panels.append(panel)


# -- the overview dashboard ------------------------------------------------------------------


def _requests(extra: str = "") -> str:
    matchers = f"{SEL}, {extra}" if extra else SEL
    return f"sum(rate(socketserver_requests_total{{{matchers}}}[{RATE}]))"


#: Outcomes the server answered or refused: the error and rejection ratios' denominator.
#: client_closed (the peer left) and timed_out (a time limit) are neither the server's errors
#: nor its successes; counted in, a flood of them would dilute the ratios (as in rules.yml).
DECIDED = 'outcome=~"ok|error|rejected"'
#: Served requests: the latency SLO's and the p99 stat's outcomes (as in rules.yml).
SERVED = 'outcome=~"ok|error"'
#: One colour per outcome, on every panel that shows them; the two that are not the
#: server's doing in blues and purples, away from the error's red.
OUTCOME_COLOURS = {"ok": "green", "error": "red", "rejected": "orange",
                   "client_closed": "blue", "timed_out": "purple"}  # fmt: skip


def _red_row(layout: Layout) -> None:
    errors = _requests('outcome="error"') + " / " + _requests(DECIDED)
    rejected = _requests('outcome="rejected"') + " / " + _requests(DECIDED)
    p99 = (
        "histogram_quantile(0.99, sum by (le) (rate(socketserver_request_duration_seconds_bucket"
        f"{{{SEL}, {SERVED}}}[{RATE}])))"
    )
    layout.row(
        "Requests (rate, errors, duration)",
        stat("Request rate", "Requests taken per second, every outcome.",
             [target(_requests(), "requests/s")], "reqps"),
        stat("Error ratio", "Share of the requests answered or refused whose handler raised "
             "(outcome=error). Clients that left (client_closed) and time-outs (timed_out) "
             "count neither way.",
             [target(errors, "errors")], "percentunit",
             steps=((None, "green"), (0.01, "orange"), (0.05, "red"))),
        stat("Rejected ratio",
             "Share of the requests answered or refused that were refused (overload=reject "
             "with a full pool, or verify_request).",
             [target(rejected, "rejected")], "percentunit",
             steps=((None, "green"), (0.001, "orange"), (0.01, "red"))),
        stat("p99 latency", "99th percentile of the request duration of served requests (ok "
             "and error), as the latency SLO counts them.",
             [target(p99, "p99")], "s",
             steps=((None, "green"), (0.1, "orange"), (0.25, "red"))),
        stat("In flight", "Requests taken and not finished, all instances.",
             [target(f"sum(socketserver_requests_in_flight{{{SEL}}})", "in flight")], "short"),
        stat("Instances up", "Targets Prometheus scraped successfully (up == 1).",
             [target(f"sum(up{{{PROC}}})", "up")], "short",
             steps=((None, "red"), (1, "green")), decimals=0),
        timeseries(
            "Requests by outcome", "Requests per second by how they ended: ok; error (the "
            "handler raised: the server's fault); rejected (refused without "
            "running the handler: overload or verify_request); client_closed (the client reset "
            "or closed the connection mid-request, like nginx's 499: logged at info, no "
            "traceback); timed_out (a time limit ended it: --request-timeout (the watchdog), "
            "--connection-timeout (idle) or --header-timeout (no request head in time: "
            "slowloris)). client_closed and timed_out are not errors: they count in no error "
            "ratio and no latency SLO; see 'Client closed and timed out'.",
            [target(f"sum by (outcome) (rate(socketserver_requests_total{{{SEL}}}[{RATE}]))",
                    "{{outcome}}")], "reqps", stack=True, overrides=colours(OUTCOME_COLOURS)),
        timeseries(
            "Error and rejection ratio", "Of the requests answered or refused (ok, error, "
            "rejected), the share that failed in the handler, and that were refused. "
            "client_closed and timed_out requests count neither way, so clients that leave or "
            "dawdle can neither raise nor dilute these. The alert SocketserverHighErrorRatio "
            "fires above 5% errors for 5 min.",
            [target(errors, "errors"), target(rejected, "rejected")], "percentunit",
            max_value=1, overrides=colours({"errors": "red", "rejected": "orange"})),
        timeseries(
            "Request duration by outcome", "p50, p90 and p99 of the time from taking a "
            "request to its shutdown_request, per outcome. timed_out requests last about their "
            "time limit and client_closed ones as long as the client stayed, so only ok and "
            "error measure the server (the latency SLO counts only those). Dots are exemplars: "
            "click one to open its trace.",
            quantiles("socketserver_request_duration_seconds", "outcome", "{{outcome}}",
                      (0.5, 0.9, 0.99)), "s"),
        timeseries(
            "Errors by hook and type", "Exceptions per second, by the hook that raised and "
            "the exception class (or the signal that killed a forked child). Clients that "
            "reset or closed the connection are not here (outcome client_closed); time-outs "
            "are (e.g. handle TimeoutError). get_request OSError is accept() failing, almost "
            "always out of file descriptors: see 'Accept failures'.",
            [target(f"sum by (hook, error_type) (rate(socketserver_errors_total{{{SEL}}}"
                    f"[{RATE}]))", "{{hook}} {{error_type}}")], "ops"),
        timeseries(
            "Slow and timed-out requests", "Requests still running after request_warn_after "
            "(logged once with their stack), and requests ended by the watchdog after "
            "request_timeout (connection cut, or child killed), per second. The watchdog's "
            "are some of the timed_out outcome, which also counts the idle and header time "
            "limits.",
            [target(f"sum(rate(socketserver_requests_slow_total{{{SEL}}}[{RATE}]))", "slow"),
             target(f"sum(rate(socketserver_requests_timed_out_total{{{SEL}}}[{RATE}]))",
                    "timed out")], "reqps"),
        timeseries(
            "Requests in flight", "Requests taken and not yet finished, per instance.",
            [target(f"sum by (instance) (socketserver_requests_in_flight{{{SEL}}})",
                    "{{instance}}")], "short"),
    )  # fmt: skip


#: The HTTP request histogram (OpenTelemetry's http.server.request.duration, no prefix): its
#: _count is the HTTP request counter. A request failed on the server's side exactly when its
#: error_type is set (a 5xx status code, or the exception class the handler raised); a 4xx
#: is the client's error and counts as a success, as in OpenTelemetry's conventions.
HTTP_DURATION = "http_server_request_duration_seconds"
HTTP_FAILED = 'error_type!=""'
#: Status classes drawn on the HTTP rate panel, and their colours.
STATUS_CLASSES = {"2xx": "green", "4xx": "orange", "5xx": "red"}


def _http_requests(extra: str = "") -> str:
    matchers = f"{SEL}, {extra}" if extra else SEL
    return f"sum(rate({HTTP_DURATION}_count{{{matchers}}}[{RATE}]))"


def _http_row(layout: Layout) -> None:
    failed = _http_requests(HTTP_FAILED) + " / " + _http_requests()

    def body_bytes(family: str, direction: str) -> Json:
        return target(f"sum by (http_route) (rate(http_server_{family}_body_size_bytes_sum"
                      f"{{{SEL}}}[{RATE}]))", f"{direction} {{{{http_route}}}}")  # fmt: skip

    layout.row(
        "HTTP requests",
        timeseries(
            "HTTP requests by status class", "HTTP requests per second (each request of a "
            "keep-alive connection counts; the Requests row counts connections) by the class "
            "of the status code sent: 2xx, 4xx (the client's error: not a server error), 5xx. "
            "Requests answered 1xx or 3xx, and those that got no response (the client left, "
            "or the handler raised before sending one), are not drawn here; see 'HTTP errors "
            "by type'. Empty for servers that do not speak HTTP.",
            [target(_http_requests(f'http_response_status_code=~"{cls[0]}.."'), cls)
             for cls in STATUS_CLASSES], "reqps", stack=True,
            overrides=colours(STATUS_CLASSES)),
        timeseries(
            "HTTP error ratio", "Share of HTTP requests that failed on the server's side: a "
            "5xx status code, or the handler raised (the label error_type is set). 4xx "
            "answers are successes. Above 5% (dashed) for 5 min fires "
            "SocketserverHttpErrorRatio.",
            [target(failed, "5xx and raised")], "percentunit", max_value=1,
            overrides=colours({"5xx and raised": "red"}),
            thresholds=((None, "green"), (0.05, "red"))),
        timeseries(
            "HTTP errors by type", "Failed HTTP requests per second by error_type: the status "
            "code (\"500\", \"503\"...) of a 5xx answer, or the class of the exception the "
            "handler raised (the access line and the span's error.type carry it too, with "
            "the route and the trace).",
            [target(f"sum by (error_type) (rate({HTTP_DURATION}_count{{{SEL}, {HTTP_FAILED}}}"
                    f"[{RATE}]))", "{{error_type}}")], "reqps", stack=True),
        timeseries(
            "HTTP latency p99 by route", "99th percentile of the HTTP request duration (from "
            "the request line to the end of the response) by route: the low-cardinality "
            "pattern the application set (\"/items/{id}\"), empty when unknown (404s, "
            "handlers that name no route). The SLO of SocketserverHttpLatencySLOBurn: 99% of "
            "the requests answered within 250 ms. Dots are exemplars: click one to open its "
            "trace.",
            quantiles(HTTP_DURATION, "http_route", "{{http_route}}", (0.99,)), "s",
            size=(12, 8)),
        timeseries(
            "HTTP latency p50 by route", "Median HTTP request duration by route.",
            quantiles(HTTP_DURATION, "http_route", "{{http_route}}", (0.5,)), "s",
            size=(12, 8)),
        timeseries(
            "HTTP requests in flight", "HTTP requests started and not finished, by method "
            "(methods outside RFC 9110 and PATCH count as _OTHER). A keep-alive connection "
            "idle between requests is not in flight here, though it holds a worker.",
            [target(f"sum by (http_request_method) (http_server_active_requests{{{SEL}}})",
                    "{{http_request_method}}")], "short", size=(12, 8), stack=True),
        timeseries(
            "HTTP body bytes by route", "Bytes per second of request bodies (in; counted "
            "from Content-Length, so only requests that send one) and of response bodies "
            "(out), by route.",
            [body_bytes("request", "in"), body_bytes("response", "out")], "Bps",
            size=(12, 8)),
    )  # fmt: skip


#: Operations a handler marks (runtime.operation): the commands of a long-lived connection
#: of another protocol than HTTP, one histogram with the operation's name and outcome.
OPERATION_DURATION = "socketserver_operation_duration_seconds"


def _operations(extra: str = "") -> str:
    matchers = f"{SEL}, {extra}" if extra else SEL
    return f"sum(rate({OPERATION_DURATION}_count{{{matchers}}}[{RATE}]))"


def _operations_row(layout: Layout) -> None:
    # As the requests' error ratio: client_closed and timed_out count neither way (an
    # operation is never rejected, so the served ones are the decided ones).
    errors = _operations('outcome="error"') + " / " + _operations(SERVED)
    layout.row(
        "Operations (marked commands)",
        timeseries(
            "Operations by outcome", "Operations per second by name and outcome: the "
            "commands a handler of a long-lived connection marks with runtime.operation() "
            "(a Redis-like GET or SET; each its own duration, span and access line), so a "
            "connection that carries 10,000 commands is not one opaque request. Outcomes: ok; "
            "error (the block raised: the server's fault); client_closed (the client left "
            "mid-operation) and timed_out (the client's connection hit its time limit, "
            "--connection-timeout, mid-operation), which are not the server's errors. Empty "
            "for servers that mark no operations (HTTP requests are in the HTTP requests row, "
            "not here).",
            [target(f"sum by (operation, outcome) (rate({OPERATION_DURATION}_count{{{SEL}}}"
                    f"[{RATE}]))", "{{operation}} {{outcome}}")], "ops", size=(12, 8),
            stack=True),
        timeseries(
            "Operation error ratio", "Of the operations served (ok, error), the share whose "
            "block raised (outcome=error), all operations together. client_closed and "
            "timed_out operations count neither way, as for requests: clients that leave or "
            "dawdle can neither raise nor dilute it. Which operation fails: 'Operations by "
            "outcome'; the access lines (event=\"operation\") carry the error_type. Empty for "
            "servers that mark no operations.",
            [target(errors, "errors")], "percentunit", size=(12, 8), max_value=1,
            overrides=colours({"errors": "red"})),
        timeseries(
            "Operation duration p99 by operation", "99th percentile of the duration of each "
            "operation (the runtime.operation() block), every outcome. Dots are exemplars: "
            "click one to open the operation's trace. Empty for servers that mark no "
            "operations.",
            quantiles(OPERATION_DURATION, "operation", "{{operation}}", (0.99,)), "s",
            size=(12, 8)),
        timeseries(
            "Operation duration p50 by operation", "Median duration of each operation.",
            quantiles(OPERATION_DURATION, "operation", "{{operation}}", (0.5,)), "s",
            size=(12, 8)),
    )  # fmt: skip


def _faults_row(layout: Layout) -> None:
    early = (
        f'sum by (outcome) (rate(socketserver_requests_total{{{SEL}, outcome=~"client_closed|'
        f'timed_out"}}[{RATE}]))\n/ ignoring (outcome) group_left () {_requests()}'
    )
    # Accept failures are counted only once they happen (the error_type is their label):
    # "or on (instance) ... * 0" draws 0 for an instance that has none, instead of "No data".
    accept = (
        f"sum by (instance, error_type) (rate(socketserver_errors_total{{{SEL}, "
        f'hook="get_request"}}[{RATE}]))\nor on (instance) sum by (instance) '
        f"(socketserver_requests_in_flight{{{SEL}}}) * 0"
    )
    layout.row(
        "Faults: clients, file descriptors, datagrams, telemetry",
        timeseries(
            "Client closed and timed out", "Share of all requests that ended early without "
            "being the server's fault, by outcome: client_closed (the client reset or closed "
            "the connection mid-request) and timed_out (--request-timeout, --connection-timeout "
            "or --header-timeout ended it). A few percent of resets is normal for some clients "
            "and load balancers. More, for a while: clients give up on a slow server (compare "
            "'Request duration by outcome' with their time-outs), handlers hang until the "
            "watchdog ends them ('Slow and timed-out requests'), a slowloris flood, or a limit "
            "too tight for honest clients. Access lines carry each request's outcome; the "
            "lines 'client closed the connection' and 'request timed out' name the hook and "
            "the exception. Above 10% (dashed) for 15 min fires "
            "SocketserverRequestsEndedEarly.",
            [target(early, "{{outcome}}")], "percentunit", size=(12, 8),
            max_value=1, overrides=colours(OUTCOME_COLOURS),
            thresholds=((None, "green"), (0.1, "orange"))),
        timeseries(
            "Accept failures", "accept() (recvfrom for UDP) failing, per second, by instance "
            "and exception class (socketserver_errors_total{hook=\"get_request\"}); 0 when "
            "none. OSError is almost always out of file descriptors (EMFILE, ENFILE: compare "
            "'File descriptors' in the Process row) or kernel memory (ENOBUFS, ENOMEM). The "
            "runtime backs off (5 ms doubling to 1 s), logs 'accept failing; backing off' once "
            "per episode and 'accepting again' with the count, and retries at once when a "
            "connection closes; meanwhile new connections wait in the kernel's queue, a wait "
            "no request duration includes, and /livez fails if nothing is accepted for its "
            "liveness timeout. Fix: raise the limit (ulimit -n, the container's nofile), or "
            "lower --max-children or --header-timeout. Failing again and again for 10 min "
            "fires SocketserverAcceptFailing.",
            [target(accept, "{{instance}} {{error_type}}")], "ops", size=(12, 8)),
        timeseries(
            "Datagrams truncated", "UDP: datagrams longer than max_packet_size, per second, "
            "by server and instance. The handler saw only their first max_packet_size bytes "
            "(the standard library cuts them too, silently); the log line 'datagram "
            "truncated' (at most once a minute, with the count since the last) names a "
            "client. Fix: raise the server class's max_packet_size (8192 by default) to the "
            "largest datagram the protocol allows, or find the client sending oversized ones. "
            "Always 0 for TCP and Unix stream servers.",
            [target(f"sum by (instance, server) (rate(socketserver_datagrams_truncated_total"
                    f"{{{SEL}}}[{RATE}]))", "{{instance}} {{server}}")], "ops", size=(12, 8)),
        timeseries(
            "Telemetry dropped", "Log lines and spans dropped per second, by instance and "
            "what, rather than block serving. log_lines: stderr's reader stopped reading (a "
            "stuck log shipper, a paused 'docker logs', a full journald); once it reads again "
            "one warning line 'log lines dropped' gives the count. Check the log pipeline, "
            "not the server. spans: the trace collector did not keep up (the export queue was "
            "full), an export failed, or the flush at exit passed its deadline; check the "
            "collector (OTEL_EXPORTER_OTLP_ENDPOINT) and its latency, or sample less "
            "(OTEL_TRACES_SAMPLER). Pre-fork: the workers' drops, summed. Drops for 10 min "
            "fire SocketserverTelemetryDropped.",
            [target(f"sum by (instance, what) (rate(socketserver_telemetry_dropped_total"
                    f"{{{PROC}}}[{RATE}]))", "{{instance}} {{what}}")], "ops", size=(12, 8)),
    )  # fmt: skip


def _hooks_row(layout: Layout) -> None:
    metric = "socketserver_hook_duration_seconds"
    layout.row(
        "socketserver hooks",
        timeseries(
            "Hook duration p99", "99th percentile of each hook: get_request, verify_request, "
            "process_request (includes the pool hand-off), finish_request (setup + handle + "
            "finish), shutdown_request, handle_error, service_actions.",
            quantiles(metric, "hook", "{{hook}}", (0.99,)), "s", size=(12, 8)),
        timeseries(
            "Hook duration p50", "Median duration of each hook.",
            quantiles(metric, "hook", "{{hook}}", (0.5,)), "s", size=(12, 8)),
        timeseries(
            "Hook calls", "Calls per second of each hook.",
            [target(f"sum by (hook) (rate({metric}_count{{{SEL}}}[{RATE}]))", "{{hook}}")],
            "ops", size=(12, 8)),
        timeseries(
            "Time in hooks", "Seconds spent per second in each hook, all threads and "
            "children: where the serving time goes (1 = one core or thread fully busy).",
            [target(f"sum by (hook) (rate({metric}_sum{{{SEL}}}[{RATE}]))", "{{hook}}")],
            "s", size=(12, 8), stack=True),
    )  # fmt: skip


def _pool_row(layout: Layout) -> None:
    utilisation = (
        f'sum by (instance) (socketserver_workers{{{SEL}, state="busy"}})\n'
        f"/ sum by (instance) (socketserver_workers_max{{{SEL}}})"
    )
    layout.row(
        "Pool saturation",
        timeseries(
            "Workers", "Worker threads (thread mode) or children (fork mode), busy and idle, "
            "against max_children (dashed).",
            [target(f"sum by (state) (socketserver_workers{{{SEL}}})", "{{state}}"),
             target(f"sum(socketserver_workers_max{{{SEL}}})", "max")],
            "short", stack=True, overrides=[dashed("max")]),
        timeseries(
            "Pool utilisation", "Busy workers / max_children per instance. Near 100% for "
            "minutes fires SocketserverPoolSaturated.",
            [target(utilisation, "{{instance}}")], "percentunit", max_value=1),
        timeseries(
            "Queue depth", "Requests waiting for a worker (the hand-off queue, queue_size).",
            [target(f"sum by (instance) (socketserver_queue_depth{{{SEL}}})", "{{instance}}")],
            "short"),
        timeseries(
            "Queue wait", "Time a request waited for a worker thread or a child slot.",
            quantiles("socketserver_queue_wait_seconds", "", "", (0.5, 0.99)), "s"),
        timeseries(
            "Rejections by reason", "Requests refused per second: overload (pool and queue "
            "full with overload=reject), verify_request (refused by the server's check).",
            [target(f"sum by (reason) (rate(socketserver_requests_rejected_total{{{SEL}}}"
                    f"[{RATE}]))", "{{reason}}")], "reqps", stack=True),
        timeseries(
            "Children reaped by status", "Fork mode: children reaped per second by exit "
            "status (ok, error: the handler raised, signal: killed).",
            [target(f"sum by (status) (rate(socketserver_children_reaped_total{{{SEL}}}"
                    f"[{RATE}]))", "{{status}}")], "ops", stack=True),
    )  # fmt: skip


def _prefork_row(layout: Layout) -> None:
    def workers(family: str, extra: str = "") -> str:
        matchers = f"{PROC}, {extra}" if extra else PROC
        return f"socketserver_worker_{family}{{{matchers}}}"

    ready = workers("processes", 'state="ready"')

    layout.row(
        "Pre-fork workers",
        timeseries(
            "Worker processes by state", "Pre-fork mode only (--mode prefork; empty for "
            "thread and fork instances). Live worker processes of the selected instances: "
            "booting (started, importing the handler, not serving yet), ready (serving), "
            "retiring (leaving after --max-requests; its replacement is already booting), "
            "stopping (asked to leave: reload, scale-down or shutdown). Ready below "
            "--workers for more than a few seconds: workers crash, hang or fail to boot "
            "(see restarts and exits). No ready worker on an instance fires "
            "SocketserverNoReadyWorkers.",
            [target(f"sum by (state) ({workers('processes')})", "{{state}}")],
            "short", stack=True),
        timeseries(
            "Worker starts and restarts", "Worker processes started per second, per "
            "instance. Starts: every new worker (at start-up, replacing a recycled one, "
            "reload (SIGHUP), scale-up (SIGTTIN), and restarts). Restarts: only those "
            "replacing a worker that crashed, hung (no heartbeat for --worker-timeout) or "
            "failed to boot; recycling, reloads and scale-down are not restarts. Restarts "
            "should stay at zero; 3 in 15 minutes fire SocketserverWorkersRestarting.",
            [target(f"sum by (instance) (rate({workers('starts_total')}[{RATE}]))",
                    "{{instance}} starts"),
             target(f"sum by (instance) (rate({workers('restarts_total')}[{RATE}]))",
                    "{{instance}} restarts")], "ops",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".* restarts"},
                        "properties": [{"id": "color",
                                        "value": {"mode": "fixed", "fixedColor": "red"}}]}]),
        timeseries(
            "Worker exits by cause", "Worker processes that exited per second, by why. "
            "Planned: shutdown (drain after SIGTERM), reload (SIGHUP), scale_down (SIGTTOU), "
            "max_requests (recycled). Failures, each replaced (a restart): crash (killed by "
            "a signal or a non-zero status: segfault, OOM killer, kill -9; log line 'worker "
            "died'), timeout (no heartbeat for --worker-timeout: aborted, every thread's "
            "stack in the log line 'worker aborted'), boot_failure (died while booting; "
            "'worker failed to boot' has the error). exit: left with status 0 unasked "
            "(someone else sent it SIGTERM).",
            [target(f"sum by (cause) (rate({workers('exits_total')}[{RATE}]))", "{{cause}}")],
            "ops", stack=True),
        timeseries(
            "Oldest worker heartbeat", "Per instance, seconds since the worker that beat "
            "least recently last beat. Workers beat every poll interval (0.5 s), so this "
            "stays near it, except that a sync worker (no --threads) does not beat while it "
            "runs one request or holds an idle connection: then it shows how long that has "
            f"lasted. At --worker-timeout (default {WORKER_TIMEOUT} s, red line) the "
            "supervisor aborts the worker (stacks in the log line 'worker aborted') and "
            f"replaces it, so the line drops. Above {WORKER_HUNG} s (orange line) for a "
            "minute fires SocketserverWorkerHung: a worker the supervisor did not replace "
            "(timeout off or raised, or the kill failed).",
            [target(f"max by (instance) ({workers('heartbeat_age_seconds')})",
                    "{{instance}}")], "s", size=(16, 8),
            thresholds=((None, "green"), (WORKER_HUNG, "orange"), (WORKER_TIMEOUT, "red"))),
        stat("Ready workers", "The fewest ready (serving) workers on any selected pre-fork "
             "instance. 0 (red): that instance accepts connections nobody serves and its "
             "/readyz fails (it needs --min-workers ready); SocketserverNoReadyWorkers fires "
             "after 2 minutes. Below --workers: workers are booting, crashing or being "
             "replaced.",
             [target(f"min({ready})", "ready")],
             "short", size=(4, 8), decimals=0, steps=((None, "red"), (1, "green"))),
        stat("Worker restarts", "Workers restarted in the time range, all selected "
             "instances: replacements of workers that crashed, hung or failed to boot "
             "(recycling, reloads and scale-down excluded). Anything above 0 is worth a "
             "look at 'Worker exits by cause' and the supervisor's error log lines.",
             [target(f"sum(increase({workers('restarts_total')}[{RANGE}]))", "restarts",
                     instant=True)], "short", size=(4, 8), decimals=0,
             steps=((None, "green"), (1, "orange"))),
    )  # fmt: skip


def _lifecycle_row(layout: Layout) -> None:
    draining = f'socketserver_lifecycle_state{{{SEL}, state="draining"}}'
    layout.row(
        "Lifecycle",
        lifecycle_timeline((16, 6)),
        stat("Drains started", "Drains begun in the time range (the draining gauge going "
             "from 0 to 1: changes minus falls).",
             [target(f"sum(changes({draining}[{RANGE}]) - resets({draining}[{RANGE}]))",
                     "drains", instant=True)], "short", size=(4, 6), decimals=0),
        stat("Restarts", "New process start times seen in the time range, all instances.",
             [target(f"sum(changes(process_start_time_seconds{{{PROC}}}[{RANGE}]))",
                     "restarts", instant=True)], "short", size=(4, 6), decimals=0,
             steps=((None, "green"), (1, "orange"))),
        timeseries(
            "Instances by state", "How many instances are in each lifecycle state.",
            [target(f"sum by (state) (socketserver_lifecycle_state{{{SEL}}})", "{{state}}")],
            "short", size=(12, 8), stack=True),
        table("Build", "Runtime and Python version of each instance.",
              [target(f"socketserver_build_info{{{PROC}}}", instant=True, table=True)],
              (12, 8)),
    )  # fmt: skip


def _process_row(layout: Layout) -> None:
    layout.row(
        "Process",
        timeseries(
            "CPU", "CPU time per second (1 = one core): the server process (pre-fork: the "
            "supervisor), and its forked children that have exited (fork mode's request "
            "children, pre-fork workers once they exit; live workers are not counted).",
            [target(f"sum by (instance) (rate(process_cpu_seconds_total{{{PROC}}}[{RATE}]))",
                    "{{instance}}"),
             target(f"sum by (instance) (rate(process_children_cpu_seconds_total{{{PROC}}}"
                    f"[{RATE}]))", "{{instance}} children")], "percentunit"),
        timeseries(
            "Memory", "Resident memory of the server process and of its live children (fork "
            "mode's request children, pre-fork workers), summed; virtual memory dashed.",
            [target(f"sum by (instance) (process_resident_memory_bytes{{{PROC}}})",
                    "{{instance}} resident"),
             target(f"sum by (instance) (process_children_resident_memory_bytes{{{PROC}}})",
                    "{{instance}} children resident"),
             target(f"sum by (instance) (process_virtual_memory_bytes{{{PROC}}})",
                    "{{instance}} virtual")], "bytes",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".* virtual"},
                        "properties": [{"id": "custom.lineStyle",
                                        "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        timeseries(
            "File descriptors", "Open file descriptors against the soft limit (dashed).",
            [target(f"sum by (instance) (process_open_fds{{{PROC}}})", "{{instance}} open"),
             target(f"sum by (instance) (process_max_fds{{{PROC}}})", "{{instance}} max")],
            "short",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".* max"},
                        "properties": [{"id": "custom.lineStyle",
                                        "value": {"fill": "dash", "dash": [10, 10]}}]}]),
        timeseries(
            "Threads", "Operating system threads of the server process.",
            [target(f"sum by (instance) (process_threads{{{PROC}}})", "{{instance}}")],
            "short"),
        timeseries(
            "Context switches", "Voluntary (waiting for I/O or a lock) and involuntary "
            "(preempted: CPU contention) switches per second.",
            [target(f"sum by (instance, kind) (rate(process_context_switches_total{{{PROC}}}"
                    f"[{RATE}]))", "{{instance}} {{kind}}")], "ops"),
        timeseries(
            "Forked children", "Live forked children: request children in fork mode, worker "
            "processes in pre-fork mode; 0 in thread mode.",
            [target(f"sum by (instance) (process_children{{{PROC}}})", "{{instance}}")],
            "short"),
    )  # fmt: skip


def _variables() -> list[Json]:
    def query_variable(name: str, label: str, query: str) -> Json:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"qryType": 1, "query": query,
                      "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,  # on time range change: new instances appear after a rollout
            "includeAll": True,
            "multi": True,
            "current": {},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
            "skipUrlSync": False,
        }  # fmt: skip

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "options": [], "refresh": 1, "regex": "",
         "hide": 0, "includeAll": False, "multi": False, "skipUrlSync": False},
        query_variable("server", "Server", "label_values(socketserver_lifecycle_state, server)"),
        query_variable("instance", "Instance",
                       'label_values(socketserver_lifecycle_state{server=~"$server"}, instance)'),
    ]  # fmt: skip


def _annotations() -> list[Json]:
    return [
        {"builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard", "enable": True,
         "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
         "datasource": {"type": "grafana", "uid": "-- Grafana --"},
         "target": {"limit": 100, "matchAny": False, "tags": [], "type": "dashboard"}},
        {"name": "Drains", "enable": True, "hide": False, "iconColor": "orange",
         "datasource": DATASOURCE,
         "expr": f'socketserver_lifecycle_state{{{SEL}, state="draining"}} == 1',
         "step": "15s", "titleFormat": "draining", "textFormat": "{{instance}}",
         "tagKeys": "server,instance", "useValueForTime": False},
    ]  # fmt: skip


def overview() -> Json:
    """The socketserver-runtime overview dashboard."""
    layout = Layout()
    _red_row(layout)
    _http_row(layout)
    _operations_row(layout)
    _faults_row(layout)
    _hooks_row(layout)
    _pool_row(layout)
    _prefork_row(layout)
    _lifecycle_row(layout)
    _process_row(layout)
    return {
        "uid": "socketserver-runtime-overview",
        "title": "socketserver-runtime / Overview",
        "description": "Requests, HTTP requests, marked operations, socketserver hooks, pool "
        "saturation, pre-fork workers, lifecycle and process metrics of servers run by "
        "socketserver-runtime.",
        "tags": ["socketserver-runtime", "python"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "id": None,
        "links": [],
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "30s",
        "weekStart": "",
        "templating": {"list": _variables()},
        "annotations": {"list": _annotations()},
        "panels": layout.panels,
    }


#: File name -> builder of each dashboard this script writes.
DASHBOARDS = {"socketserver-overview.json": overview}


def render(dashboard: Json) -> str:
    """The committed form: sorted keys, two-space indent, trailing newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with the committed files instead of writing them",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="directory (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build())
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/generate.py",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
