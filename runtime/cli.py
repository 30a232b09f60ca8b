"""``python -m runtime HANDLER [flags]``: serve a socketserver handler in production.

Flags override ``RUNTIME_*`` environment variables, which override defaults.
A wrong setting gets one line on stderr naming it (the flag, or the variable
the value came from) and the fix, and exit status 2.  A flag's text is read as
the same setting's variable would be (:func:`runtime.config.parse_value`), so
both take the same values and are held to the same ranges.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from .app import StartupError, build
from .config import (
    LIMITS,
    MAX_WORKERS,
    MODES,
    OVERLOAD,
    TRACES,
    ConfigError,
    Settings,
    parse_value,
    settings_from,
)
from .examples import EXAMPLES
from .telemetry.logging import FORMATS, LEVELS

__all__ = ["main"]

PROG = "runtime"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes "--drain-delay -inf" (or -1e3) for a missing value followed by an
        # option; no option here looks like a number, so let every number be a value and
        # get the range check's message.  (A private attribute: without it, argparse's
        # own one-line error still names the flag.)
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
        )

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the setting and what is wrong.
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _range(name: str) -> str:
    """A setting's range for its help: ``1-1024``, ``>0-86400``."""
    return LIMITS[name].span()


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Serve a socketserver request handler with metrics, traces, "
        "bounded pools, probes and graceful shutdown.",
        epilog="Every flag has an environment variable: --max-children is RUNTIME_MAX_CHILDREN. "
        f"Examples: {', '.join(sorted(EXAMPLES))}.",
        argument_default=None,
    )
    a = p.add_argument
    a(
        "handler",
        nargs="?",
        metavar="HANDLER",
        help="module:Class of a socketserver request handler, or an example name (default: echo)",
    )
    a(
        "--bind",
        metavar="ADDR",
        help="host:port, udp://host:port, unix:/path or unixgram:/path (default: 127.0.0.1:9000)",
    )
    a("--mode", choices=MODES, help="sync, thread (default), fork or prefork")
    a(
        "--workers",
        metavar="N",
        help=f"prefork: worker processes, {_range('workers')} (default: usable CPUs)",
    )
    a(
        "--threads",
        metavar="N",
        help=f"prefork: threads per worker, {_range('threads')} (default 0: none)",
    )
    a(
        "--min-workers",
        metavar="N",
        help=f"prefork: ready with this many up, {_range('min_workers')} (default 1)",
    )
    a(
        "--worker-timeout",
        metavar="SECONDS",
        help="prefork: abort (stack logged) and replace a worker silent this long, "
        f"{_range('worker_timeout')} and at least 2 x --poll-interval, 0: never (default 30)",
    )
    a(
        "--max-requests",
        metavar="N",
        help=f"prefork: recycle a worker after N requests, {_range('max_requests')} (0: never)",
    )
    a(
        "--max-requests-jitter",
        metavar="N",
        help=f"prefork: plus up to N, at random, {_range('max_requests_jitter')}",
    )
    a(
        "--reuse-port",
        action=argparse.BooleanOptionalAction,
        help="prefork: a SO_REUSEPORT listener per worker instead of one shared (default off)",
    )
    a(
        "--worker-tmp-dir",
        metavar="DIR",
        help="prefork: where the supervisor makes the folder of the workers' metric files and "
        "stacks (default: the system's, $TMPDIR or /tmp); a read-only root needs a writable "
        "mount there, or e.g. /dev/shm",
    )
    a(
        "--server",
        metavar="MODULE:CLASS",
        help="socketserver server class to instrument, e.g. http.server:HTTPServer",
    )
    a(
        "--max-children",
        metavar="N",
        help=f"ceiling of worker threads (default 128), forked children (default 40), "
        f"{_range('max_children')}; or of prefork workers (default 2 x --workers), at most "
        f"{MAX_WORKERS}",
    )
    a(
        "--queue-size",
        metavar="N",
        help=f"thread hand-off queue, {_range('queue_size')} (default: max-children)",
    )
    a("--overload", choices=OVERLOAD, help="when full: wait (backpressure, default) or reject")
    a(
        "--backlog",
        metavar="N",
        help=f"listen backlog, {_range('backlog')} (default 128; the kernel caps it at "
        "net.core.somaxconn)",
    )
    a(
        "--tcp-nodelay",
        action=argparse.BooleanOptionalAction,
        help="set TCP_NODELAY on accepted connections (default on)",
    )
    a(
        "--admin",
        metavar="HOST:PORT",
        help="admin port for /metrics /livez /readyz (default 127.0.0.1:9100; 'off' disables)",
    )
    a(
        "--drain-delay",
        metavar="SECONDS",
        help="after SIGTERM, keep serving this long with readiness failing, "
        f"{_range('drain_delay')} (default 5)",
    )
    a(
        "--graceful-timeout",
        metavar="SECONDS",
        help="then wait this long for requests in flight before forcing them, "
        f"{_range('graceful_timeout')} (default 30)",
    )
    a(
        "--flush-timeout",
        metavar="SECONDS",
        help="then wait at most this long to export the last spans (the rest are counted as "
        f"dropped), {_range('flush_timeout')} (default 5)",
    )
    a(
        "--liveness-timeout",
        metavar="SECONDS",
        help="/livez fails when the serving loop made no progress for this long, "
        f"{_range('liveness_timeout')} and at least 2 x --poll-interval (default 30)",
    )
    a(
        "--connection-timeout",
        metavar="SECONDS",
        help="idle limit of a stream connection's reads and writes, "
        f"{_range('connection_timeout')} or 'none' (default 60); "
        "a handler's own timeout attribute wins",
    )
    a(
        "--header-timeout",
        metavar="SECONDS",
        help="a new connection waits for its request without a worker (HTTP: the whole head; "
        "other handlers: if they set request_head_end), and is closed if it takes longer, "
        f"{_range('header_timeout')} or 'none' (default 10)",
    )
    a(
        "--request-warn-after",
        metavar="SECONDS",
        help="log (once, with its thread's stack) and count a request running longer, "
        f"{_range('request_warn_after')} or 'none' (default 30)",
    )
    a(
        "--request-timeout",
        metavar="SECONDS",
        help="end a request running longer: cut its connection, or kill its child, "
        f"{_range('request_timeout')} or 'none' (default none)",
    )
    a(
        "--poll-interval",
        metavar="SECONDS",
        help=f"how often an idle serving loop turns (heartbeat, deadlines), "
        f"{_range('poll_interval')} (default 0.5)",
    )
    a("--server-name", metavar="NAME", help="the 'server' metric label (default: handler name)")
    a("--metrics-prefix", metavar="PREFIX", help="metric name prefix (default socketserver_)")
    a("--log-level", choices=LEVELS, help="default info")
    a("--log-format", choices=FORMATS, help="json, console, or auto (console on a TTY)")
    a(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="one log line per request (default on)",
    )
    a(
        "--traces",
        choices=TRACES,
        help="trace exporter: none (default, or OTEL_TRACES_EXPORTER), console or otlp "
        "(OTLP/HTTP; OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...)",
    )
    return p


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from flags over ``RUNTIME_*`` variables; raises ConfigError.

    A flag's text means what the same text in its variable would (``none``, ranges).
    """
    args = _parser().parse_args(argv)
    overrides = {
        name: parse_value(name, value, "--" + name.replace("_", "-"))
        if isinstance(value, str) else value
        for name, value in vars(args).items()
        if value is not None  # not given
    }  # fmt: skip
    return settings_from(environ, overrides)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = parse(argv, os.environ if environ is None else environ)
        app = build(settings)
    except (ConfigError, StartupError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(app.describe(), flush=True)
    return app.run()
