"""The Grafana dashboards: generated, portable, and built only from metrics the runtime exposes.

No Prometheus here (tests/integration/test_prometheus_integration.py runs every query for real); the
metric names come from the /metrics page of a real demo server in thread, fork and pre-fork
mode, of the HTTP demo (http_hello) once it has served a request to each of its paths, and of
a handler that marks operations (tests/handlers.py's CommandsHandler) once it has served
some, one failing.
"""

from __future__ import annotations

import re
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _monitoring import (
    COMMAND_REPLIES,
    DASHBOARDS,
    DATASOURCE,
    SYNTHETIC,
    all_queries,
    dashboards,
    exposed_names,
    family_of,
    load_module,
    metric_names,
    panels,
    rules,
    selectors,
    send_commands,
    variable_query,
    variables,
)
from _proc import RuntimeProcess, poll
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(60)

generate = load_module(DASHBOARDS / "generate.py")


#: GET paths of the HTTP demo (http_hello) and the status each answers: a route, a
#: route with a parameter, no route (404), a server error.
HTTP_PATHS = {"/": 200, "/items/1": 200, "/nope": 404, "/error": 500}


def http_get(address: tuple[str, int], path: str) -> int:
    """One GET to the demo's serving port; the status code."""
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)


def http_traffic(server: RuntimeProcess) -> None:
    """One GET to each of the HTTP demo's paths, and wait until they are counted."""
    statuses = {path: http_get(server.address, path) for path in HTTP_PATHS}
    assert statuses == HTTP_PATHS
    # Counted once each request has ended (the client may read its response before that).
    poll(lambda: server.metric("http_server_request_duration_seconds_count") >= len(HTTP_PATHS),
         timeout=10, what="HTTP requests counted")  # fmt: skip


def command_traffic(server: RuntimeProcess) -> None:
    """One connection of commands (operations, one failing), and wait until they are counted."""
    assert send_commands(server.address) == COMMAND_REPLIES
    count = "socketserver_operation_duration_seconds_count"

    def counted() -> bool:  # four ok, one error (counted once each operation has ended)
        ok, error = server.metric(count, outcome="ok"), server.metric(count, outcome="error")
        return ok >= 4 and error >= 1

    poll(counted, timeout=10, what="operations counted")


@pytest.fixture(scope="module")
def pages() -> Iterator[list[str]]:
    """The demo's /metrics in thread, fork and pre-fork mode (the supervisor's own families),
    the HTTP demo's after one request to each of its paths (the http_server_* samples), and
    the commands handler's after some operations (socketserver_operation_duration_seconds)."""
    texts = []
    runs = [("echo", "thread"), ("echo", "fork"), ("echo", "prefork"), ("http_hello", "thread"),
            ("handlers:CommandsHandler", "thread")]  # fmt: skip
    for handler, mode in runs:
        extra = ("--workers", "1") if mode == "prefork" else ()
        server = RuntimeProcess(handler, "--mode", mode, *extra, "--drain-delay", "0")
        try:
            # Pre-fork: once a worker is ready, its heartbeat series exists too.
            poll(server.ready, timeout=15, what=f"{handler} {mode} server ready")
            if handler == "http_hello":
                http_traffic(server)
            elif handler == "handlers:CommandsHandler":
                command_traffic(server)
            status, _, text = server.get("/metrics")
            assert status == 200
            server.signal(signal.SIGTERM)  # the supervisor takes its workers down with it
            server.wait(timeout=15)
        finally:
            server.close()
        texts.append(text)
    yield texts


@pytest.fixture(scope="module")
def exposed(pages: list[str]) -> tuple[set[str], set[str]]:
    """``(families, series names)`` of the demo's /metrics, every mode together."""
    families: set[str] = set()
    series: set[str] = set()
    for text in pages:
        f, s = exposed_names(text)
        families |= f
        series |= s
    return families, series


@pytest.fixture(scope="module")
def server_labelled(pages: list[str]) -> dict[str, bool]:
    """Series name -> whether its samples carry a ``server`` label (seen samples only)."""
    labelled: dict[str, bool] = {}
    for text in pages:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                carries = "server" in sample.labels
                assert labelled.setdefault(sample.name, carries) == carries, sample.name
    return labelled


def test_committed_dashboards_are_what_generate_py_writes(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert written, "generate.py wrote nothing"
    assert written.keys() == committed.keys(), "run: python dashboards/generate.py"
    for name, text in written.items():
        assert committed[name] == text, f"{name} is stale; run: python dashboards/generate.py"
    assert generate.main(["--check"]) == 0


def test_check_mode_notices_a_stale_file(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    path = next(tmp_path.iterdir())
    path.write_text(path.read_text().replace("socketserver_", "sockserver_", 1))
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_and_query_uses_the_datasource_variable(name: str) -> None:
    dashboard = dashboards()[name]
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    datasource = variables(dashboard)["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    seen = 0
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            seen += 1
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == DATASOURCE, annotation["name"]
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    assert seen > 20
    assert set(_datasource_uids(dashboard)) <= {"${datasource}", "-- Grafana --"}


def _datasource_uids(node: Any) -> Iterator[str]:
    """Every datasource uid anywhere in the JSON (none may be hard-coded)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value["uid"] if isinstance(value, dict) else str(value)
            else:
                yield from _datasource_uids(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_uids(item)


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_latency_panels_show_exemplars(name: str) -> None:
    latency = [
        (panel["title"], target)
        for panel in panels(dashboards()[name])
        for target in panel["targets"]
        if "histogram_quantile" in target["expr"] and panel["type"] == "timeseries"
    ]
    assert latency
    for title, target in latency:
        assert target["exemplar"] is True, title
    assert any("socketserver_request_duration_seconds_bucket" in t["expr"] for _, t in latency)


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_template_variables_and_identity(name: str) -> None:
    dashboard = dashboards()[name]
    found = variables(dashboard)
    assert {"datasource", "server", "instance"} <= found.keys()
    assert variable_query(found["server"]) == ("socketserver_lifecycle_state", "server")
    selector, label = variable_query(found["instance"])
    assert label == "instance"
    assert "$server" in selector  # instances of the chosen servers only
    for var in ("server", "instance"):
        assert found[var]["multi"] and found[var]["includeAll"]
        # No allValue: "All" then expands to the listed values, so $instance never
        # matches targets that are not socketserver-runtime (process_* and up queries).
        assert "allValue" not in found[var] or not found[var]["allValue"]
    assert dashboard["uid"] and re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert 39 <= dashboard["schemaVersion"] < 50
    assert dashboard["id"] is None


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_layout_has_unique_ids_and_no_overlap(name: str) -> None:
    items = dashboards()[name]["panels"]
    assert len({p["id"] for p in items}) == len(items)
    cells: dict[tuple[int, int], str] = {}
    for panel in items:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    rows = [p["title"] for p in items if p["type"] == "row"]
    wanted_rows = ("Requests", "HTTP", "Operations", "hooks", "Pool", "Pre-fork", "Lifecycle",
                   "Process")  # fmt: skip
    for wanted in wanted_rows:
        assert any(wanted in row for row in rows), f"no row about {wanted}: {rows}"


def test_every_query_filters_by_server_and_instance(server_labelled: dict[str, bool]) -> None:
    """$instance everywhere; $server on every series that has a server label, and on no other
    (process_*, build_info, the pre-fork supervisor's worker_* families): a server matcher
    there would select nothing once a server is chosen."""
    assert server_labelled["socketserver_requests_total"]
    assert server_labelled["http_server_request_duration_seconds_count"]
    assert server_labelled["socketserver_operation_duration_seconds_count"]
    assert not server_labelled["socketserver_worker_restarts_total"]
    for query in all_queries():
        found = selectors(query.expr)
        assert found, f"no braced selector in {query}"
        for metric, matchers in found:
            assert 'instance=~"$instance"' in matchers, f"{metric} unfiltered in {query}"
            has_server = server_labelled.get(metric)
            if has_server is None:  # no sample seen (a labelled counter still at zero)
                has_server = metric.startswith(("socketserver_", "http_server_"))
            if has_server:
                assert 'server=~"$server"' in matchers, f"{metric} unfiltered in {query}"
            else:
                assert "server" not in re.sub(r'"[^"]*"', "", matchers), (
                    f"{metric} has no server label, but {query} matches one"
                )


def test_worker_heartbeat_panel_marks_the_alert_and_the_default_timeout() -> None:
    from runtime.config import Settings

    hung_after, timeout = generate.WORKER_HUNG, generate.WORKER_TIMEOUT
    assert Settings().worker_timeout == timeout
    (hung,) = [rule for rule in rules() if rule.get("alert") == "SocketserverWorkerHung"]
    assert hung["expr"].strip() == f"socketserver_worker_heartbeat_age_seconds > {hung_after}"
    (panel,) = [
        p for d in dashboards().values() for p in panels(d)
        if "socketserver_worker_heartbeat_age_seconds" in p["targets"][0]["expr"]
    ]  # fmt: skip
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps] == [None, hung_after, timeout]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
    assert f"{timeout} s" in panel["description"]


def _used_by_dashboards() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for query in all_queries():
        for name in metric_names(query.expr):
            used.setdefault(name, []).append(str(query))
    for dashboard in dashboards().values():
        for variable in variables(dashboard).values():
            if variable["type"] == "query":
                selector, _ = variable_query(variable)
                for name in metric_names(selector):
                    used.setdefault(name, []).append(f"variable {variable['name']}")
    return used


def test_dashboards_query_only_exposed_metrics(exposed: tuple[set[str], set[str]]) -> None:
    _, series = exposed
    used = _used_by_dashboards()
    assert len(used) > 15
    unknown = {name: where for name, where in used.items() if name not in series | SYNTHETIC}
    assert not unknown, f"metrics the runtime does not expose: {unknown}"


def test_rules_query_only_exposed_metrics(exposed: tuple[set[str], set[str]]) -> None:
    _, series = exposed
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        unknown = metric_names(rule["expr"]) - series - SYNTHETIC - recorded
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown {unknown}"


def test_every_exposed_family_is_on_the_dashboard(exposed: tuple[set[str], set[str]]) -> None:
    families, _ = exposed
    shown = {family_of(name, families) for name in _used_by_dashboards()}
    ours = {
        f
        for f in families
        if f.startswith(("socketserver_", "process_", "http_server_"))
        and not f.endswith("_created")
    }
    missing = ours - shown
    assert not missing, f"exposed but on no panel: {sorted(missing)}"


def _outcomes(expr: str) -> set[str]:
    """Every outcome an ``outcome`` matcher of *expr* names (regex alternatives split)."""
    found = re.findall(r'outcome\s*(?:=~|!~|=|!=)\s*"([^"]*)"', expr)
    return {value for values in found for value in values.split("|")}


def test_outcomes_are_real_and_apart_and_only_error_is_an_error() -> None:
    """Every outcome has its own colour wherever outcomes are drawn; a ratio of errors counts
    only outcome="error", and no client that left (client_closed) or time-out (timed_out)
    in its denominator either: a flood of them would dilute it."""
    from runtime.telemetry.metrics import OUTCOMES

    queries = all_queries()
    named = set().union(*(_outcomes(q.expr) for q in queries))
    assert {"error", "client_closed", "timed_out"} <= named <= set(OUTCOMES), named
    by_outcome = [q.panel_json for q in queries if q.target.get("legendFormat") == "{{outcome}}"]
    assert len(by_outcome) >= 2  # requests by outcome, client closed and timed out
    for panel in by_outcome:
        colours = {
            o["matcher"]["options"]: prop["value"]["fixedColor"]
            for o in panel["fieldConfig"]["overrides"]
            for prop in o["properties"]
            if o["matcher"]["id"] == "byName" and prop["id"] == "color"
        }
        assert set(colours) == set(OUTCOMES), panel["title"]
        assert len(set(colours.values())) == len(OUTCOMES), f"{panel['title']}: {colours}"
    ratios = [q for q in queries if q.target.get("legendFormat") == "errors"]
    assert len(ratios) >= 3  # the stat, the ratio panel, the operations' ratio
    for query in ratios:
        numerator, denominator = query.expr.split(" / ")
        assert _outcomes(numerator) == {"error"}, query
        assert not _outcomes(denominator) & {"client_closed", "timed_out"}, query


def test_http_server_errors_are_error_type_set_and_4xx_are_not() -> None:
    """A failed HTTP request is one with error_type set (a 5xx answer, or the handler
    raised); 4xx answers are the clients' errors: in the ratio's denominator only."""
    http = [q for q in all_queries() if "http_server_request_duration_seconds" in q.expr]
    assert len(http) >= 5
    for query in http:
        for found in re.findall(r'error_type\s*(=~|!~|=|!=)\s*"([^"]*)"', query.expr):
            assert found == ("!=", ""), query
    (ratio,) = [q for q in http if q.panel == "HTTP error ratio"]
    numerator, denominator = ratio.expr.split(" / ")
    assert 'error_type!=""' in numerator, ratio
    assert "error_type" not in denominator and "status_code" not in denominator, ratio
    (by_class,) = [p for d in dashboards().values() for p in panels(d)
                   if p["title"] == "HTTP requests by status class"]  # fmt: skip
    classes = {t["legendFormat"]: t["expr"] for t in by_class["targets"]}
    assert list(classes) == ["2xx", "4xx", "5xx"]
    for name, expr in classes.items():
        assert f'http_response_status_code=~"{name[0]}.."' in expr, expr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y{z}"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum by (hook, le) (rate(b[5m]))) > 1e3", {"b"}),
        ("up == 0 and on (job) max_over_time(c[1h] offset 5m)", {"up", "c"}),
        ("d / ignoring(state) group_left() e * 2", {"d", "e"}),
        ("job:f:rate5m > bool 0.5 unless g", {"job:f:rate5m", "g"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_misspelt_metric_would_be_caught(exposed: tuple[set[str], set[str]]) -> None:
    _, series = exposed
    assert "socketserver_requests_total" in series
    assert "socketserver_request_duration_seconds_bucket" in series
    assert not metric_names("sum(rate(socketserver_request_total[5m]))") <= series
