"""``python -m runtime HANDLER [flags]``: serve a socketserver handler in production.

Flags override ``RUNTIME_*`` environment variables, which override defaults.
A wrong setting gets one line on stderr naming it, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from .app import StartupError, build
from .config import MODES, OVERLOAD, TRACES, ConfigError, Settings, settings_from
from .examples import EXAMPLES
from .telemetry.logging import FORMATS, LEVELS

__all__ = ["main"]

PROG = "runtime"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the setting and what is wrong.
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


class _Off:
    """A flag's explicit "none": the setting is off (distinct from "flag not given")."""


OFF = _Off()


def _seconds_or_none(text: str) -> float | _Off:
    if text.strip().lower() in ("none", "off", ""):
        return OFF
    return float(text)


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
    a("--workers", type=int, metavar="N", help="prefork: worker processes (default: usable CPUs)")
    a("--threads", type=int, metavar="N", help="prefork: threads per worker (default 0: none)")
    a("--min-workers", type=int, metavar="N", help="prefork: ready with this many up (default 1)")
    a(
        "--worker-timeout",
        type=float,
        metavar="SECONDS",
        help="prefork: abort (stack logged) and replace a worker silent this long (default 30)",
    )
    a("--max-requests", type=int, metavar="N", help="prefork: recycle a worker after N requests")
    a("--max-requests-jitter", type=int, metavar="N", help="prefork: plus up to N, at random")
    a(
        "--reuse-port",
        action=argparse.BooleanOptionalAction,
        help="prefork: a SO_REUSEPORT listener per worker instead of one shared (default off)",
    )
    a(
        "--server",
        metavar="MODULE:CLASS",
        help="socketserver server class to instrument, e.g. http.server:HTTPServer",
    )
    a(
        "--max-children",
        type=int,
        metavar="N",
        help="ceiling of worker threads (default 128), forked children (default 40) "
        "or prefork workers (default 2 x --workers)",
    )
    a("--queue-size", type=int, metavar="N", help="thread hand-off queue (default: max-children)")
    a("--overload", choices=OVERLOAD, help="when full: wait (backpressure, default) or reject")
    a("--backlog", type=int, metavar="N", help="listen backlog (default 128)")
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
        type=float,
        metavar="SECONDS",
        help="after SIGTERM, keep serving this long with readiness failing (default 5)",
    )
    a(
        "--graceful-timeout",
        type=float,
        metavar="SECONDS",
        help="then wait this long for requests in flight before forcing them (default 30)",
    )
    a(
        "--liveness-timeout",
        type=float,
        metavar="SECONDS",
        help="/livez fails when the serving loop made no progress for this long (default 30)",
    )
    a(
        "--connection-timeout",
        type=_seconds_or_none,
        metavar="SECONDS",
        help="idle limit of a stream connection's reads and writes (default 60; 'none'); "
        "a handler's own timeout attribute wins",
    )
    a(
        "--request-warn-after",
        type=_seconds_or_none,
        metavar="SECONDS",
        help="log (once, with its thread's stack) and count a request running longer (default 30)",
    )
    a(
        "--request-timeout",
        type=_seconds_or_none,
        metavar="SECONDS",
        help="end a request running longer: cut its connection, or kill its child (default none)",
    )
    a("--poll-interval", type=float, metavar="SECONDS", help="serve_forever poll interval")
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
    """Settings from flags over ``RUNTIME_*`` variables; raises ConfigError."""
    args = _parser().parse_args(argv)
    overrides = {k: (None if v is OFF else v) for k, v in vars(args).items() if v is not None}
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
