"""Dashboards and rules against a real Prometheus scraping real servers.

Three demo servers named "echo" (three instances of one service): one in thread mode with
a single worker and the reject policy (so requests get rejected) and a 6 s drain delay, one
in fork mode (so the fork-only series exist), one in pre-fork mode with two sync workers
(so the supervisor's socketserver_worker_* series exist). A fourth, the HTTP demo
"http_hello" (thread mode), has the per-HTTP-request http_server_* families; a fifth,
"commands" (thread mode, tests/handlers.py's CommandsHandler), marks each command of its
connections with runtime.operation() (socketserver_operation_duration_seconds). All trace
(exemplars: thread and fork). A real Prometheus (scrape and rule evaluation every second,
exemplar storage on) scrapes their admin ports and evaluates deploy/prometheus/rules.yml.
One pre-fork worker is held by an open connection throughout (a sync worker does not beat
meanwhile); the other is killed with SIGKILL three times once Prometheus has scraped (each
replaced: restarts). Traffic: ok requests, handler errors, overload rejections, HTTP
requests answered 200, 404 and 500, operations ok and failed (an INCR that raises), then
SIGTERM to the thread server and its drain. Then EVERY dashboard query (template variables
substituted as Grafana would, every server selected) and EVERY recording rule must
evaluate without error and return at least one finite sample; the template-variable queries
must list every server and instance; exemplars must reach Prometheus; every rule must
evaluate healthy; six alerts must go pending or fire on the real series (error ratio, HTTP
error ratio, drain, target down, worker restarts, hung worker).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from _monitoring import (
    COMMAND_REPLIES,
    PROMETHEUS,
    RULES,
    all_queries,
    dashboards,
    rules,
    send_commands,
    substitute,
    variable_query,
    variables,
)
from _proc import ROOT, env, poll, send_all_read_all
from prometheus_client.parser import text_string_to_metric_families

PROMETHEUS_BIN = os.environ.get("PROMETHEUS", "prometheus")
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        shutil.which(PROMETHEUS_BIN) is None,
        reason="prometheus is not installed (Debian package prometheus; `make deps`)",
    ),
]

DRAIN_DELAY = 6.0
#: SocketserverWorkerHung's threshold: a worker silent longer than this goes pending.
HUNG_AFTER = 10.0


# -- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    """``python -m runtime HANDLER`` (echo, http_hello, or a module:Class) with stdout in a
    file (console traces go there)."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    address: tuple[str, int] = ("", 0)
    admin: str = ""  # host:port

    @classmethod
    def start(cls, tmp: Path, name: str, *args: str, handler: str = "echo") -> Server:
        out, err = tmp / f"{name}.out", tmp / f"{name}.err"
        cmd = [
            sys.executable,
            "-m",
            "runtime",
            handler,
            "--bind",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--traces",
            "console",
            "--no-access-log",
            *args,
        ]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=stdout, stderr=stderr)
        server = cls(name, proc, out, err)
        poll(server._parse, timeout=15, what=f"{name} to print its addresses")
        return server  # fmt: skip

    def _parse(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.err.read_text()[-2000:]}")
        text = self.out.read_text(errors="replace")
        bound = re.search(r"serving \S+ on tcp://([\d.]+):(\d+)", text)
        admin = re.search(r"admin http://([\d.]+:\d+)/", text)
        if not (bound and admin):
            return False
        self.address = (bound.group(1), int(bound.group(2)))
        self.admin = admin.group(1)
        return True

    def metrics(self) -> dict[str, float]:
        """One read of the admin port's /metrics: sample name and labels -> value."""
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Stop now; SIGKILL would leave a pre-fork supervisor's workers and folder behind.
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=10)


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as err:  # 400/422 carry the PromQL error as JSON
            return json.loads(err.read())

    def query(self, expr: str, at: float) -> Any:
        return self.get("/api/v1/query", query=expr, time=f"{at:.3f}")

    def value(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of *expr* now ([] while it selects nothing)."""
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", (expr, reply)
        return list(reply["data"]["result"])

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp: Path, targets: list[str]) -> Path:
    """The committed prometheus.yml with the test's targets, 1 s intervals and rules path."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(tmp: Path, config: Path) -> Prometheus:
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS_BIN, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prometheus = Prometheus(proc, f"http://127.0.0.1:{port}", log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {prometheus.logs()}")
        try:
            with urllib.request.urlopen(prometheus.url + "/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    poll(ready, timeout=20, what="prometheus to be ready")
    return prometheus


# -- traffic ---------------------------------------------------------------------------------

#: GET paths of the HTTP demo and the status each answers: a route, a route with a parameter
#: (route "/items/{id}"), no route (404: not a server error), a server error (500).
HTTP_PATHS = {"/": 200, "/items/1": 200, "/nope": 404, "/error": 500}


def http_get(address: tuple[str, int], path: str) -> int:
    """One GET (its own connection); the status code, 0 when no answer came."""
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as err:
        err.read()
        return int(err.code)
    except OSError:  # refused, reset, timed out: the statuses assertion shows it
        return 0


def request(address: tuple[str, int], line: bytes) -> bytes:
    """One connection, one line; b"" when the server closed it (rejected, or failed)."""
    try:
        return send_all_read_all(address, line)
    except OSError as exc:
        # A connection the server closed with our line unread is reset by the kernel;
        # depending on timing the client sees that as ECONNRESET, EPIPE or ENOTCONN.
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            return b""
        raise


@dataclass
class Traffic:
    """Ok requests and handler errors to each echo server, a GET of each HTTP_PATHS to
    each HTTP server, and one connection of COMMANDS (operations, one failing) to each
    commands server, about 20 rounds a second."""

    servers: list[Server]
    http: list[Server] = field(default_factory=list)
    commands: list[Server] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    replies: dict[bytes, int] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)  # path -> status -> n
    command_replies: dict[bytes, int] = field(default_factory=dict)

    def run(self) -> None:
        while not self.stop.is_set():
            for server in self.servers:
                if server.proc.poll() is not None:
                    continue
                for line in (b"hello\n", b"hello\n", b"fail\n"):
                    try:
                        reply = request(server.address, line)
                    except OSError:  # refused once the drain closed the listener
                        reply = b"<refused>"
                    self.replies[reply] = self.replies.get(reply, 0) + 1
            for server in self.http:
                for path in HTTP_PATHS:
                    counts = self.statuses.setdefault(path, {})
                    status = http_get(server.address, path)
                    counts[status] = counts.get(status, 0) + 1
            for server in self.commands:
                try:
                    reply = send_commands(server.address)
                except OSError as exc:  # the assertion on command_replies shows it
                    reply = repr(exc).encode()
                self.command_replies[reply] = self.command_replies.get(reply, 0) + 1
            self.stop.wait(0.05)  # pacing the load, not waiting for anything


def hold_and_reject(server: Server, count: int) -> None:
    """Keep the single worker busy with an open connection while *count* others connect."""
    deadline = time.monotonic() + 10
    while True:  # the background traffic may have the worker: retry until this one has it
        holder = socket.create_connection(server.address, timeout=5)
        holder.sendall(b"hold\n")
        try:
            replied = holder.recv(16)
        except ConnectionResetError:
            replied = b""
        if replied == b"hold\n":
            break
        holder.close()
        assert time.monotonic() < deadline, "never got the worker"
    try:
        for _ in range(count):
            assert request(server.address, b"rejected?\n") == b""
    finally:
        holder.close()


def kill_workers(server: Server, count: int, spare: socket.socket) -> None:
    """SIGKILL *count* ready pre-fork workers one after another, each after the last's
    replacement is ready (the supervisor counts each as a restart); never the worker that
    holds *spare*'s connection."""
    peer = spare.getsockname()
    for restarts in range(count):

        def replaced(restarts: int = restarts) -> bool:
            # One read: the killed worker counts as ready until it is reaped (a restart).
            now = server.metrics()
            return (now["socketserver_worker_restarts_total{}"] == restarts
                    and now['socketserver_worker_processes{"state": "ready"}'] == 2)  # fmt: skip

        poll(replaced, timeout=10, what=f"two ready workers after {restarts} restarts")
        workers = psutil.Process(server.proc.pid).children()
        assert len(workers) == 2, workers
        idle = [w for w in workers if all(c.raddr != peer for c in w.net_connections("tcp"))]
        assert len(idle) == 1, (workers, idle)
        idle[0].kill()
    poll(lambda: server.metrics()["socketserver_worker_restarts_total{}"] == count,
         timeout=10, what=f"{count} restarts counted")  # fmt: skip


def hold_worker(server: Server) -> socket.socket:
    """A connection a pre-fork sync worker has taken (it echoed) and keeps: no heartbeats."""
    holder = socket.create_connection(server.address, timeout=5)
    holder.sendall(b"hold\n")
    assert holder.recv(16) == b"hold\n"
    return holder


# -- the test --------------------------------------------------------------------------------


@pytest.fixture
def stack(
    tmp_path: Path,
) -> Iterator[tuple[Prometheus, Server, Server, Server, Server, Server]]:
    started: list[Server] = []
    prometheus: Prometheus | None = None
    try:
        thread = Server.start(
            tmp_path,
            "thread",
            "--mode",
            "thread",
            "--max-children",
            "1",
            "--queue-size",
            "0",
            "--overload",
            "reject",
            "--drain-delay",
            str(DRAIN_DELAY),
            "--graceful-timeout",
            "5",
        )
        started.append(thread)
        fork = Server.start(tmp_path, "fork", "--mode", "fork", "--max-children", "4",
                            "--drain-delay", "0")  # fmt: skip
        started.append(fork)
        # --worker-timeout well above the test's length: the held worker must not be aborted.
        prefork = Server.start(tmp_path, "prefork", "--mode", "prefork", "--workers", "2",
                               "--worker-timeout", "120", "--drain-delay", "0")  # fmt: skip
        started.append(prefork)
        # The HTTP demo, server label "http_hello" (the handler's name, as "echo" above).
        http = Server.start(tmp_path, "http", "--mode", "thread", "--drain-delay", "0",
                            handler="http_hello")  # fmt: skip
        started.append(http)
        # Marked operations (socketserver_operation_duration_seconds), server "commands".
        commands = Server.start(tmp_path, "commands", "--mode", "thread", "--drain-delay", "0",
                                "--server-name", "commands",
                                handler="handlers:CommandsHandler")  # fmt: skip
        started.append(commands)
        admins = [thread.admin, fork.admin, prefork.admin, http.admin, commands.admin]
        prometheus = start_prometheus(tmp_path, write_config(tmp_path, admins))
        yield prometheus, thread, fork, prefork, http, commands
    finally:
        if prometheus is not None:
            prometheus.proc.kill()
            prometheus.proc.wait(timeout=10)
        for server in started:
            server.stop()


def wait_for(prometheus: Prometheus, expr: str, timeout: float, what: str) -> None:
    try:
        poll(lambda: bool(prometheus.value(expr)), timeout=timeout, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: {expr} stayed empty\n{prometheus.logs()}") from None


def wait_alert(
    prometheus: Prometheus, name: str, states: str, timeout: float, **labels: str
) -> None:
    """Poll until alert *name* with *labels* is in one of *states* ("pending|firing")."""

    def found() -> bool:
        return any(
            alert["labels"]["alertname"] == name
            and alert["state"] in states.split("|")
            and all(alert["labels"].get(k) == v for k, v in labels.items())
            for alert in prometheus.get("/api/v1/alerts")["data"]["alerts"]
        )

    poll(found, timeout=timeout, what=f"alert {name} {states} {labels}")


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def test_every_dashboard_query_and_recording_rule_returns_data(
    stack: tuple[Prometheus, Server, Server, Server, Server, Server],
) -> None:
    prometheus, thread, fork, prefork, http, commands = stack
    admins = sorted([thread.admin, fork.admin, prefork.admin, http.admin, commands.admin])
    instances = f"({'|'.join(admins)})"
    started = time.time()
    # A pre-fork worker held from now on (the supervisor reports its heartbeat's age).
    holder = hold_worker(prefork)
    held_at = time.monotonic()

    # 1. Every target scraped.
    def all_up() -> bool:
        targets = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
        return sorted(t["labels"]["instance"] for t in targets if t["health"] == "up") == admins

    poll(all_up, timeout=20, what="every target up")

    # 2. Pre-fork: three workers killed and replaced, once Prometheus has seen none (the
    # alert's increase() needs the counter's earlier value); not the held one.
    kill_workers(prefork, 3, holder)

    # 3. Traffic: ok, errors (every echo server), overload rejections (thread server), HTTP
    # requests answered 200, 404 and 500 (the HTTP server), operations ok and failed (the
    # commands server).
    traffic = Traffic([thread, fork, prefork], [http], [commands])
    driver = threading.Thread(target=traffic.run, name="traffic", daemon=True)
    driver.start()
    try:
        hold_and_reject(thread, 3)
        wait_for(prometheus, f'socketserver_requests_rejected_total{{reason="overload", '
                 f'instance="{thread.admin}"}} >= 3', 15, "rejections scraped")  # fmt: skip
        wait_for(prometheus, 'sum by (instance) (socketserver_errors_total{hook="handle"}) > 0'
                 ' and sum by (instance) (socketserver_children_reaped_total) > 0', 15,
                 "handler errors and reaped children scraped")  # fmt: skip
        wait_alert(prometheus, "SocketserverHighErrorRatio", "pending|firing", 15, server="echo")
        # A quarter of the HTTP requests answer 500 (and a quarter 404: not errors).
        wait_for(prometheus, 'count(sum by (http_response_status_code) (http_server_request_'
                 'duration_seconds_count{server="http_hello", http_response_status_code=~'
                 '"200|404|500"}) > 0) == 3', 15, "HTTP 200s, 404s and 500s scraped")  # fmt: skip
        wait_alert(prometheus, "SocketserverHttpErrorRatio", "pending|firing", 15,
                   server="http_hello")  # fmt: skip
        # Each connection: four operations ok, and an INCR that raised (outcome error).
        wait_for(prometheus, 'count(sum by (outcome) (socketserver_operation_duration_seconds_'
                 'count{server="commands", outcome=~"ok|error"}) > 0) == 2', 15,
                 "operations ok and failed scraped")  # fmt: skip
        # No `for`: three restarts within 15 minutes fire at once.
        wait_alert(prometheus, "SocketserverWorkersRestarting", "firing", 10,
                   instance=prefork.admin)  # fmt: skip

        # 4. Graceful drain of the thread server, scraped while it lasts.
        thread.proc.send_signal(signal.SIGTERM)
        draining = f'socketserver_lifecycle_state{{state="draining", instance="{thread.admin}"}}'
        wait_for(prometheus, f"sum_over_time({draining}[10s]) >= 3", DRAIN_DELAY + 2,
                 "three scrapes of the draining state")  # fmt: skip
        wait_alert(prometheus, "SocketserverDrainingTooLong", "pending", 5, instance=thread.admin)
        assert thread.proc.poll() is None, "the drain ended before it was scraped three times"
        # Every query below is evaluated at this instant: every server scraped, traffic
        # flowing, the thread server draining.
        at = time.time() - 0.5
    finally:
        traffic.stop.set()
        driver.join(timeout=10)
    assert traffic.replies.get(b"hello\n", 0) > 10, traffic.replies
    assert {path: set(counts) for path, counts in traffic.statuses.items()} == {
        path: {status} for path, status in HTTP_PATHS.items()
    }, traffic.statuses
    assert set(traffic.command_replies) == {COMMAND_REPLIES}, traffic.command_replies
    assert traffic.command_replies[COMMAND_REPLIES] > 10, traffic.command_replies

    values = {
        "server": "(echo|http_hello|commands)", "instance": instances, "datasource": "unused",
        "__rate_interval": "5s", "__interval": "1s", "__range": "5m",
        "__range_s": "300", "__interval_ms": "1000",
    }  # fmt: skip

    # 5. Every dashboard query: valid PromQL, and data (a finite value somewhere).
    failures = []
    queries = all_queries()
    assert len(queries) > 30
    for query in queries:
        expr = substitute(query.expr, values)
        reply = prometheus.query(expr, at)
        if reply.get("status") != "success":
            failures.append(f"{query}\n    error: {reply.get('error')}")
        elif not reply["data"]["result"]:
            failures.append(f"{query}\n    no data")
        elif not finite(reply["data"]["result"]):
            failures.append(f"{query}\n    only NaN/Inf: {reply['data']['result']}")
    assert not failures, "dashboard queries without data:\n" + "\n".join(failures)

    # 6. Every recording rule has recorded finite data by then.
    recorded = [rule["record"] for rule in rules() if "record" in rule]
    for name in recorded:
        reply = prometheus.query(name, at)
        assert reply["status"] == "success", (name, reply)
        if not reply["data"]["result"] or not finite(reply["data"]["result"]):
            failures.append(f"{name}: {reply['data']['result']}")
    assert not failures, "recording rules without data:\n" + "\n".join(failures)

    # The HTTP error ratio counts the 500s (a quarter of the requests), not the 404s.
    reply = prometheus.query('job_server:http_server_requests_errors:ratio_rate5m'
                             '{server="http_hello"}', at)  # fmt: skip
    (ratio,) = reply["data"]["result"]
    assert 0.2 < float(ratio["value"][1]) < 0.3, ratio
    # The operation error ratio panel: one operation in five raised (INCR of "x").
    (errors,) = [q for q in queries if q.panel == "Operation error ratio"]
    reply = prometheus.query(substitute(errors.expr, values), at)
    (ratio,) = reply["data"]["result"]
    assert 0.15 < float(ratio["value"][1]) < 0.25, ratio

    # 7. Template variables list the servers and every instance.
    for dashboard in dashboards().values():
        for name, variable in variables(dashboard).items():
            if variable["type"] != "query":
                continue
            selector, label = variable_query(variable)
            reply = prometheus.get(
                f"/api/v1/label/{label}/values", **{"match[]": substitute(selector, values)},
                start=f"{started:.3f}", end=f"{at:.3f}",
            )  # fmt: skip
            assert reply["status"] == "success", (name, reply)
            listed = set(reply["data"])
            wanted = {"echo", "http_hello", "commands"} if label == "server" else set(admins)
            assert wanted <= listed, f"variable {name} lists {listed}"

    # 8. Exemplars (trace ids) of the duration panels reach Prometheus: per connection
    # (socketserver_*), per HTTP request and per marked operation.
    histograms = ("socketserver_request_duration_seconds", "http_server_request_duration_seconds",
                  "socketserver_operation_duration_seconds")  # fmt: skip
    for histogram in histograms:
        latency = next(q for q in queries if f"{histogram}_bucket" in q.expr
                       and q.target.get("exemplar"))  # fmt: skip
        reply = prometheus.get("/api/v1/query_exemplars",
                               query=substitute(latency.expr, values),
                               start=f"{started:.3f}", end=f"{at:.3f}")  # fmt: skip
        assert reply["status"] == "success", reply
        exemplars = [e for series in reply["data"] for e in series["exemplars"]]
        assert exemplars, f"no exemplars for {latency}"
        assert all(re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]) for e in exemplars)

    # 9. Every rule evaluates without error on the real series.
    def evaluated() -> bool:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        health = [(r.get("name"), r["health"], r.get("lastError")) for g in groups
                  for r in g["rules"]]  # fmt: skip
        broken = [h for h in health if h[1] == "err"]
        assert not broken, broken
        return len(health) == len(rules()) and all(h[1] == "ok" for h in health)

    poll(evaluated, timeout=5, what="every rule evaluated")

    # 10. The drained server exits; its target goes down and the alert notices.
    returncode = thread.proc.wait(timeout=DRAIN_DELAY + 10)
    assert returncode == 0, thread.err.read_text()[-2000:]
    wait_alert(prometheus, "SocketserverTargetDown", "pending", 10, instance=thread.admin)

    # 11. The held worker has not beaten for over 10 s: pending (for 1 minute before firing).
    with holder:
        deadline = held_at + HUNG_AFTER + 10  # + a scrape and an evaluation, with margin
        wait_alert(prometheus, "SocketserverWorkerHung", "pending",
                   deadline - time.monotonic(), instance=prefork.admin)  # fmt: skip
    assert time.time() - started < 60


def test_substitute_refuses_unknown_variables() -> None:
    with pytest.raises(KeyError):
        substitute("rate(x[$__unknown])", {"server": "echo"})
    assert substitute('x{a=~"$server", b="${server}"}', {"server": "e"}) == 'x{a=~"e", b="e"}'
