"""The suite's numbers: samples, per-scenario summaries, the table, and the targets
(issue 4, item 2; issue 5, item 6: the pre-fork pool).

Ratios are paired: for each round, a server's value over its baseline's
value in the same round, then the median over rounds, so slow drift of the
machine cancels.  ``suite.py`` measures; this module only computes and prints.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from _harness import ROOT, median, percent_text, ratio_text

#: Each server's baseline for the ``x base`` and ``CPU x`` columns.
BASELINES = {
    "stdlib-pool8": "stdlib-threading",
    "stdlib-forking": "stdlib-threading",
    "runtime-lean": "stdlib-threading",
    "runtime-full": "stdlib-threading",
    "runtime-threading": "stdlib-threading",
    "runtime-threading-notel": "stdlib-threading",
    "runtime-threading-nolog": "stdlib-threading",
    "runtime-threading-watchdog": "stdlib-threading",
    "runtime-default": "stdlib-threading",
    "runtime-forking": "stdlib-forking",
    "runtime-prefork": "stdlib-threading",
    "runtime-prefork-reuseport": "stdlib-threading",
    "stdlib-http": "gunicorn-sync",
    "stdlib-http-nodelay": "gunicorn-sync",
    "runtime-http": "gunicorn-sync",
    "runtime-prefork-http": "gunicorn-sync",
    "runtime-prefork-http-reuseport": "gunicorn-sync",
    "runtime-prefork-http-threads": "gunicorn-sync",
    "gunicorn-gthread": "gunicorn-sync",
}
TARGET_CLIENTS = 64
BOUNDED_LOW, BOUNDED_HIGH = 8, 512
#: Threads (or processes) a server may have beyond its pool: main, serving loop,
#: parent watch, span processor, and a few to spare.
THREAD_SLACK = 8
MEMORY_SLACK_MIB = 20.0
RENDER_LIMIT_MS = 5.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One run of the load against one server."""

    scenario: str
    server: str
    clients: int
    round: int
    requests: int  # good (checked) replies, the tail after the run included
    rps: float  # good replies per second within the run's duration
    p50_ms: float
    p99_ms: float
    errors: int
    timeouts: int
    starved: int | None  # keep-alive/connect: clients well below the median; http: None
    port_exhaustion: int
    wall_seconds: float  # how long the load ran, tail included
    server_cpu_seconds: float  # the server's whole process tree
    loadgen_cpu_seconds: float
    other_cpu_seconds: float | None  # the server CPU's busy time not spent by the server
    peak_threads: int
    peak_memory_bytes: int
    settle_seconds: float  # how long the server kept busy after the load ended
    raw: dict[str, Any] = field(repr=False)

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests * 1e6 if self.requests else math.nan

    def share(self, cpu_seconds: float | None) -> float:
        """*cpu_seconds* as a fraction of one CPU over this run."""
        if cpu_seconds is None or not self.wall_seconds:
            return math.nan
        return cpu_seconds / self.wall_seconds

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_us_per_request": self.cpu_us_per_request}


def paired(
    samples: Sequence[Sample], base: Sequence[Sample], value: Callable[[Sample], float]
) -> float:
    """Median over rounds of value(sample) / value(baseline's sample of that round)."""
    by_round = {b.round: b for b in base}
    ratios = []
    for s in samples:
        b = by_round.get(s.round)
        if b is not None:
            denominator = value(b)
            ratios.append(value(s) / denominator if denominator else math.nan)
    return median(ratios)


@dataclass(frozen=True)
class Summary:
    """The runs of one (scenario, clients, server): medians, sums, peaks, paired ratios."""

    scenario: str
    server: str
    clients: int
    baseline: str | None
    runs: int
    rps: float
    rps_min: float
    rps_max: float
    rps_ratio: float
    p50_ms: float
    p99_ms: float
    errors: int
    timeouts: int
    starved: int | None  # the most in any run
    port_exhaustion: int
    cpu_us_per_request: float
    cpu_ratio: float
    peak_threads: int
    peak_memory_mib: float
    server_cpu_share: float
    loadgen_cpu_share: float
    other_cpu_share: float
    noisy_runs: int
    min_requests: int
    settle_seconds: float  # the longest

    @classmethod
    def of(
        cls, samples: Sequence[Sample], baseline: str | None, base: Sequence[Sample], noise: float
    ) -> Summary:
        first = samples[0]
        rps = [s.rps for s in samples]
        starved = [s.starved for s in samples if s.starved is not None]
        return cls(
            scenario=first.scenario,
            server=first.server,
            clients=first.clients,
            baseline=baseline,
            runs=len(samples),
            rps=statistics.median(rps),
            rps_min=min(rps),
            rps_max=max(rps),
            rps_ratio=paired(samples, base, lambda s: s.rps),
            p50_ms=statistics.median(s.p50_ms for s in samples),
            p99_ms=statistics.median(s.p99_ms for s in samples),
            errors=sum(s.errors for s in samples),
            timeouts=sum(s.timeouts for s in samples),
            starved=max(starved) if starved else None,
            port_exhaustion=sum(s.port_exhaustion for s in samples),
            cpu_us_per_request=median([s.cpu_us_per_request for s in samples]),
            cpu_ratio=paired(samples, base, lambda s: s.cpu_us_per_request),
            peak_threads=max(s.peak_threads for s in samples),
            peak_memory_mib=max(s.peak_memory_bytes for s in samples) / MIB,
            server_cpu_share=median([s.share(s.server_cpu_seconds) for s in samples]),
            loadgen_cpu_share=median([s.share(s.loadgen_cpu_seconds) for s in samples]),
            other_cpu_share=median([s.share(s.other_cpu_seconds) for s in samples]),
            noisy_runs=sum(s.share(s.other_cpu_seconds) > noise for s in samples),
            min_requests=min(s.requests for s in samples),
            settle_seconds=max(s.settle_seconds for s in samples),
        )


def select(samples: Sequence[Sample], scenario: str, clients: int, server: str) -> list[Sample]:
    return [s for s in samples if (s.scenario, s.clients, s.server) == (scenario, clients, server)]


def summarize(
    samples: Sequence[Sample], groups: Sequence[tuple[str, int, Sequence[str]]], noise: float
) -> list[Summary]:
    """One summary per (scenario, clients, server) of *groups*, in that order."""
    out = []
    for scenario, clients, names in groups:
        for name in names:
            mine = select(samples, scenario, clients, name)
            if not mine:
                continue
            baseline = BASELINES.get(name)
            base = select(samples, scenario, clients, baseline) if baseline else []
            out.append(Summary.of(mine, baseline if base else None, base, noise))
    return out


# -- the table ---------------------------------------------------------------------------

COLUMNS = (
    ("scenario", 9, "s"), ("server", 19, "s"), ("clients", 7, "d"), ("req/s", 7, ".0f"),
    ("x base", 6, "s"), ("p50 ms", 7, ".2f"), ("p99 ms", 7, ".2f"), ("errors", 6, "d"),
    ("t/o", 5, "d"), ("starved", 7, "s"), ("us/req", 6, ".1f"), ("CPU x", 6, "s"),
    ("threads", 7, "d"), ("RSS MiB", 7, ".0f"), ("srv", 4, "s"), ("lg", 4, "s"), ("other", 5, "s"),
)  # fmt: skip
LEGEND = """\
req/s, p50, p99, us/req (server CPU time per good reply): medians over runs;
errors, t/o (time-outs): summed over runs; starved: clients that got under a tenth
of the median client's replies, most in a run (keep-alive: the pool never served them)
x base, CPU x: median over rounds of (this server / its baseline in the same round) for
req/s and us/req; baseline: stdlib-threading (TCP, runtime-prefork included),
stdlib-forking (runtime-forking), gunicorn-sync (HTTP).  threads, RSS MiB: peaks of
the server's process tree (forked children and workers included): the root's RSS plus
each descendant's private memory
srv, lg: server and load generator CPU as % of one core; other: busy time of the
server's CPU not spent by the server"""


def table(summaries: Sequence[Summary]) -> str:
    # The server column fits the longest name (runtime-prefork-http-reuseport).
    server_width = max([COLUMNS[1][1], *(len(s.server) for s in summaries)])
    columns = [*COLUMNS[:1], ("server", server_width, "s"), *COLUMNS[2:]]
    header = "  ".join(
        f"{name:<{w}}" if i < 2 else f"{name:>{w}}" for i, (name, w, _) in enumerate(columns)
    )
    lines = [header, "-" * len(header)]
    group = None
    for s in summaries:
        if group is not None and group != (s.scenario, s.clients):
            lines.append("")
        group = (s.scenario, s.clients)
        values: tuple[Any, ...] = (
            s.scenario, s.server, s.clients, s.rps, ratio_text(s.rps_ratio), s.p50_ms, s.p99_ms,
            s.errors, s.timeouts, "-" if s.starved is None else str(s.starved),
            s.cpu_us_per_request, ratio_text(s.cpu_ratio), s.peak_threads, s.peak_memory_mib,
            percent_text(s.server_cpu_share), percent_text(s.loadgen_cpu_share),
            percent_text(s.other_cpu_share),
        )  # fmt: skip
        cells = [
            f"{v:<{w}{fmt}}" if i < 2 else f"{v:>{w}{fmt}}"
            for i, (v, (_, w, fmt)) in enumerate(zip(values, columns, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join([*lines, "", LEGEND])


def notes(summaries: Sequence[Summary], discarded: Sequence[Sample], noise: float) -> list[str]:
    out = []
    for s in summaries:
        where = f"{s.scenario} {s.server} @ {s.clients}"
        if s.port_exhaustion:
            out.append(f"{where}: {s.port_exhaustion} connects hit EADDRNOTAVAIL (client ports)")
        if s.loadgen_cpu_share > 0.9:
            out.append(f"{where}: the load generator used >90% of its CPU; may be the limit")
        if s.other_cpu_share > 0.05:
            share = percent_text(s.other_cpu_share)
            out.append(f"{where}: other work took {share} of the server's CPU")
        if s.settle_seconds > 1.0:
            out.append(
                f"{where}: the server kept busy {s.settle_seconds:.1f} s after a run (e.g. on "
                "connections its clients gave up); the next run waited"
            )
        if s.noisy_runs:
            out.append(
                f"{where}: {s.noisy_runs} of {s.runs} kept runs still had other work above "
                "--noise-limit on the server's CPU"
            )
    if discarded:
        out.append(
            f"{len(discarded)} run(s) discarded and repeated: other work took more than "
            f"{noise:.0%} of the server's CPU (kept in the JSON)"
        )
    return out


# -- the targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One check of issue 4, item 2 or issue 5, item 6: what was measured against what limit."""

    label: str
    value: str
    limit: str
    verdict: str  # PASS, FAIL, n/a (not measured in this run), or info (no limit)


def _check(label: str, value: float, limit: float, *, at_most: bool, unit: str = "x") -> Target:
    def show(v: float) -> str:
        if unit == "x":
            return f"{v:.2f}x"
        return f"{v:.1f} {unit}" if unit == "MiB" else f"{v:.0f} {unit}"

    bound = f"{'<=' if at_most else '>='} {show(limit)}"
    if math.isnan(value):
        return Target(label, "-", bound, "n/a")
    ok = value <= limit if at_most else value >= limit
    return Target(label, show(value), bound, "PASS" if ok else "FAIL")


METRICS: dict[str, Callable[[Sample], float]] = {
    "req/s": lambda s: s.rps,
    "CPU/request": lambda s: s.cpu_us_per_request,
    "p99": lambda s: s.p99_ms,
}
#: (scenario, server, baseline, metric, limit, at most?) at TARGET_CLIENTS clients.
RATIO_TARGETS = (
    ("connect", "runtime-lean", "stdlib-pool8", "CPU/request", 1.3, True),
    ("connect", "runtime-lean", "stdlib-threading", "req/s", 2.0, False),
    ("connect", "runtime-full", "stdlib-threading", "req/s", 1.5, False),
    ("connect", "runtime-full", "stdlib-threading", "p99", 1.0, True),
    ("keepalive", "runtime-default", "stdlib-threading", "req/s", 0.95, False),
    ("connect", "runtime-forking", "stdlib-forking", "req/s", 1.0, False),
    ("http", "runtime-http", "gunicorn-sync", "req/s", 2.0, False),
    # Issue 5: the pool as deployed for HTTP (threads, keep-alive), as runtime-http is.
    ("http", "runtime-prefork-http-threads", "gunicorn-sync", "req/s", 1.5, False),
)
#: (scenario, server, baseline, metric) at TARGET_CLIENTS clients: reported, no limit.
#: Sync workers closing each connection (gunicorn sync's model), the threaded pool
#: against gunicorn's threaded workers and against thread mode, SO_REUSEPORT listeners
#: against the shared one, and pre-fork against thread mode.
INFO_RATIOS = (
    ("http", "runtime-prefork-http", "gunicorn-sync", "req/s"),  # close per request, sync workers
    ("http", "runtime-prefork-http-threads", "gunicorn-gthread", "req/s"),  # threads, keep-alive
    ("http", "runtime-prefork-http-threads", "gunicorn-gthread", "CPU/request"),
    ("http", "runtime-prefork-http-threads", "runtime-http", "req/s"),  # issue 5: thread mode
    ("http", "runtime-prefork-http-reuseport", "runtime-prefork-http", "req/s"),
    ("http", "runtime-prefork-http-reuseport", "runtime-prefork-http", "CPU/request"),
    ("connect", "runtime-prefork-reuseport", "runtime-prefork", "req/s"),
    ("keepalive", "runtime-prefork-reuseport", "runtime-prefork", "req/s"),
    ("connect", "runtime-prefork", "runtime-lean", "req/s"),
    ("connect", "runtime-prefork", "runtime-lean", "CPU/request"),
)


def _max_children() -> dict[str, int]:
    """The pools' default ceilings, read from the runtime under test."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import runtime

    threads = runtime.ThreadingTCPServer.max_children
    return {
        "runtime-lean": threads,
        "runtime-full": threads,
        "runtime-forking": runtime.ForkingTCPServer.max_children,
    }


def _ratio(samples: Sequence[Sample], scenario: str, server: str, base: str, metric: str) -> float:
    """The paired ratio at TARGET_CLIENTS, NaN when either was not measured."""
    mine = select(samples, scenario, TARGET_CLIENTS, server)
    theirs = select(samples, scenario, TARGET_CLIENTS, base)
    return paired(mine, theirs, METRICS[metric]) if mine and theirs else math.nan


def evaluate_targets(
    summaries: Sequence[Summary],
    samples: Sequence[Sample],
    render: dict[str, Any] | None,
    skipped: dict[str, str] | None = None,
) -> list[Target]:
    def summary(scenario: str, server: str, clients: int) -> Summary | None:
        for s in summaries:
            if (s.scenario, s.server, s.clients) == (scenario, server, clients):
                return s
        return None

    out = []
    n = TARGET_CLIENTS
    for scenario, server, base, metric, limit, at_most in RATIO_TARGETS:
        value = _ratio(samples, scenario, server, base, metric)
        label = f"{scenario} {n}: {server} {metric} / {base}"
        out.append(_check(label, value, limit, at_most=at_most))
    keep = summary("keepalive", "runtime-default", n)
    starved = math.nan if keep is None or keep.starved is None else float(keep.starved)
    label = f"keepalive {n}: runtime-default starved clients"
    out.append(_check(label, starved, 0, at_most=True, unit="clients"))
    for server, ceiling in _max_children().items():
        high = summary("connect", server, BOUNDED_HIGH)
        low = summary("connect", server, BOUNDED_LOW)
        threads = math.nan if high is None else float(high.peak_threads)
        label = f"connect {BOUNDED_HIGH}: {server} peak threads, max_children {ceiling}"
        out.append(_check(label, threads, ceiling + THREAD_SLACK, at_most=True, unit="threads"))
        grown = math.nan
        if high is not None and low is not None:
            grown = high.peak_memory_mib - low.peak_memory_mib
        label = f"connect {BOUNDED_HIGH}: {server} peak MiB over {BOUNDED_LOW} clients"
        out.append(_check(label, grown, MEMORY_SLACK_MIB, at_most=True, unit="MiB"))
    out.append(_render_target(render))
    for scenario, server, base, metric in INFO_RATIOS:
        value = _ratio(samples, scenario, server, base, metric)
        label = f"{scenario} {n}: {server} {metric} / {base}"
        if math.isnan(value):
            why = "skipped" if {server, base} & set(skipped or ()) else "not measured"
            out.append(Target(label, "-", f"({why})", "n/a"))
        else:
            out.append(Target(label, f"{value:.2f}x", "(no target)", "info"))
    return out


def _render_target(render: dict[str, Any] | None) -> Target:
    label = "/metrics render median, every family populated (text / OpenMetrics)"
    limit = f"< {RENDER_LIMIT_MS:.1f} ms"
    if not render:
        return Target(label, "-", limit, "n/a")
    text, om = render["text"]["median_ms"], render["openmetrics"]["median_ms"]
    empty = render["families_without_samples"]
    value = f"{text:.2f} / {om:.2f} ms" + (f", empty: {', '.join(empty)}" if empty else "")
    ok = max(text, om) < RENDER_LIMIT_MS and not empty
    return Target(label, value, limit, "PASS" if ok else "FAIL")


def targets_text(targets: Sequence[Target], render: dict[str, Any] | None) -> str:
    width = max(len(t.label) for t in targets)
    value_width = max(8, *(len(t.value) for t in targets))
    limit_width = max(len(t.limit) for t in targets)
    title = "targets (issue 4, item 2; issue 5, item 6)"
    head = f"{title:<{width}}  {'measured':>{value_width}}  {'limit':<{limit_width}}  verdict"
    lines = [head, "-" * len(head)]
    for t in targets:
        lines.append(
            f"{t.label:<{width}}  {t.value:>{value_width}}  {t.limit:<{limit_width}}  {t.verdict}"
        )
    if render:
        lines.append(
            f"(/metrics: {render['families']} families, {render['samples']} samples, "
            f"{render['text']['bytes'] / 1024:.0f} KiB text; p99 "
            f"{render['text']['p99_ms']:.2f} / {render['openmetrics']['p99_ms']:.2f} ms "
            f"over {render['renders']} renders)"
        )
    return "\n".join(lines)
