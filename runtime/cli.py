"""``python -m runtime [HANDLER] [options]``, or the ``socketserver-runtime`` command:
serve a socketserver request handler in production.

Flags override ``RUNTIME_*`` environment variables, which override defaults.
A wrong setting gets one line on stderr naming it (the flag, or the variable
the value came from) and the fix, and exit status 2.  A flag's text is read as
the same setting's variable would be (:func:`runtime.config.parse_value`), so
both take the same values and are held to the same ranges.  So does a start
that fails (a port in use, a handler module that does not import: the line
names the module, the exception and its file and line); with ``--log-level
debug`` the traceback behind it follows the line.

Library code names settings as flags (``--bind``); this module alone prints,
and names the variable instead when that is where the value came from.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from ._version import __version__
from .app import StartupError, build
from .config import (
    LIMITS,
    MAX_WORKERS,
    MODES,
    OVERLOAD,
    TRACES,
    ConfigError,
    Settings,
    environment_variables,
    named_as_given,
    parse_value,
    settings_from,
)
from .examples import EXAMPLES
from .telemetry.logging import FORMATS, LEVELS

__all__ = ["PROG", "SCRIPT", "main", "parse"]

#: How errors begin under ``python -m runtime``.
PROG = "runtime"
#: The console script (``[project.scripts]``): its usage and errors go by this name.
SCRIPT = "socketserver-runtime"


def _names() -> tuple[str, str]:
    """(the command as typed, for the usage line; the name errors begin with)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == SCRIPT:
        return SCRIPT, SCRIPT
    return "python -m runtime", PROG


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, name: str = PROG, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        # argparse takes "--drain-delay -inf" (or -1e3) for a missing value followed by an
        # option; no option here looks like a number, so let every number be a value and
        # get the range check's message.  (A private attribute: without it, argparse's
        # own one-line error still names the flag.)
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
        )

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the setting and what is wrong.
        self.exit(2, f"{self.name}: error: {message} (see --help)\n")


def _range(name: str) -> str:
    """A setting's range for its help: ``1-1024``, ``>0-86400``."""
    return LIMITS[name].span()


def _usage() -> str:
    """The usage line (``%(prog)s`` is the command as typed), and what HANDLER may be."""
    examples = ", ".join(
        f"{name} (the default)" if name == Settings.handler else name for name in sorted(EXAMPLES)
    )
    return (
        "%(prog)s [HANDLER] [options]\n"
        f"       HANDLER: module:Class of a request handler, or an example: {examples}"
    )


def _parser(prog: str = "python -m runtime", name: str = PROG) -> argparse.ArgumentParser:
    """The command line: *prog* is the command as typed, *name* begins error lines."""
    p = _Parser(
        prog=prog,
        name=name,
        usage=_usage(),
        description="Serve a socketserver request handler with metrics, traces, "
        "bounded pools, probes and graceful shutdown.",
        epilog="Every flag has an environment variable: --max-children is RUNTIME_MAX_CHILDREN; "
        "flags win. A setting the runtime cannot use, or a start that fails, is one line on "
        "stderr and exit status 2.",
        argument_default=None,
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"{SCRIPT} {__version__} (Python {platform.python_version()})",
        help="print the version and exit",
    )
    a = p.add_argument_group("handler").add_argument
    a(
        "handler",
        nargs="?",
        metavar="HANDLER",
        help="module:Class of a socketserver request handler (a BaseRequestHandler subclass, "
        "or a functools.partial of one), or an example name (default: echo)",
    )
    a = p.add_argument_group("server and its pool").add_argument
    a(
        "--bind",
        metavar="ADDR",
        help="host:port, udp://host:port, unix:/path or unixgram:/path (default: 127.0.0.1:9000)",
    )
    a("--mode", choices=MODES, help="sync, thread (default), fork or prefork")
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
    a = p.add_argument_group("pre-fork (--mode prefork)").add_argument
    a(
        "--workers",
        metavar="N",
        help=f"worker processes, {_range('workers')} (default: usable CPUs)",
    )
    a(
        "--threads",
        metavar="N",
        help=f"threads per worker, {_range('threads')} (default 0: none)",
    )
    a(
        "--min-workers",
        metavar="N",
        help=f"ready with this many up, {_range('min_workers')} (default 1)",
    )
    a(
        "--worker-timeout",
        metavar="SECONDS",
        help="abort (stack logged) and replace a worker silent this long, "
        f"{_range('worker_timeout')} and at least 2 x --poll-interval, 0: never (default 30)",
    )
    a(
        "--max-requests",
        metavar="N",
        help=f"recycle a worker after N requests, {_range('max_requests')} (0: never)",
    )
    a(
        "--max-requests-jitter",
        metavar="N",
        help=f"plus up to N, at random, {_range('max_requests_jitter')}",
    )
    a(
        "--reuse-port",
        action=argparse.BooleanOptionalAction,
        help="a SO_REUSEPORT listener per worker instead of one shared (default off)",
    )
    a(
        "--worker-tmp-dir",
        metavar="DIR",
        help="where the supervisor makes the folder of the workers' metric files and "
        "stacks (default: the system's, $TMPDIR or /tmp); a read-only root needs a writable "
        "mount there, or e.g. /dev/shm",
    )
    a = p.add_argument_group("drain and probes").add_argument
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
        "--poll-interval",
        metavar="SECONDS",
        help=f"how often an idle serving loop turns (heartbeat, deadlines), "
        f"{_range('poll_interval')} (default 0.5)",
    )
    a = p.add_argument_group("time limits").add_argument
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
    a = p.add_argument_group("telemetry").add_argument
    a("--server-name", metavar="NAME", help="the 'server' metric label (default: handler name)")
    a("--metrics-prefix", metavar="PREFIX", help="metric name prefix (default socketserver_)")
    a(
        "--log-level",
        choices=LEVELS,
        help="default info; debug also prints the traceback behind a start-up error (e.g. "
        "a handler module that fails to import) after its one line",
    )
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


def _parse(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    prog: str = "python -m runtime",
    name: str = PROG,
) -> tuple[Settings, dict[str, str]]:
    """:func:`parse`, and which settings came from a variable (setting -> variable)."""
    args = _parser(prog, name).parse_args(argv)
    overrides = {
        key: parse_value(key, value, "--" + key.replace("_", "-"))
        if isinstance(value, str) else value
        for key, value in vars(args).items()
        if value is not None  # not given
    }  # fmt: skip
    settings = settings_from(environ, overrides)
    variables = environment_variables(environ)
    return settings, {key: var for key, var in variables.items() if key not in overrides}


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from flags over ``RUNTIME_*`` variables; raises ConfigError.

    A flag's text means what the same text in its variable would (``none``, ranges).
    """
    return _parse(argv, environ)[0]


def _working_folder_importable() -> None:
    """Let the console script import ``module:Class`` from the working folder.

    ``python -m runtime`` finds it there because ``-m`` puts the working folder first
    on ``sys.path``; a console script puts its own folder (the venv's ``bin``) there
    instead, so the same command would not find the same module.
    """
    with contextlib.suppress(OSError):  # a working folder that was removed: nothing to add
        here = os.getcwd()
        if here not in sys.path and "" not in sys.path:
            sys.path.insert(0, here)


def _print_traceback(exc: BaseException) -> None:
    """*exc*'s traceback on stderr, from the first frame that is neither the runtime's nor
    importlib's: the user's code is what it is printed for (a SyntaxError keeps its
    file, line and caret)."""
    tb = exc.__traceback__
    while tb is not None and _machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep


def _machinery(path: str) -> bool:
    return path.startswith(("<frozen importlib", _PACKAGE, _IMPORTLIB))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command (*argv*, *environ*: the process's own when None) until it stops.

    Returns the exit status: the runtime's (0 after a clean drain), or 2 after one line
    on stderr for a setting it cannot use or a start that fails.  ``--help`` and
    ``--version`` print and raise SystemExit(0), as argparse does.
    """
    prog, name = _names()
    if name == SCRIPT:
        _working_folder_importable()
    settings: Settings | None = None
    from_environment: dict[str, str] = {}
    try:
        settings, from_environment = _parse(
            argv, os.environ if environ is None else environ, prog, name
        )
        app = build(settings)
    except (ConfigError, StartupError) as exc:
        # Named as the user gave it: RUNTIME_BIND, not --bind, when that set the address.
        setting = named_as_given(exc.setting, from_environment)
        print(f"{name}: error: {setting}: {exc.message}", file=sys.stderr, flush=True)
        if exc.__cause__ is not None and settings is not None and settings.log_level == "debug":
            _print_traceback(exc.__cause__)
        return 2
    print(app.describe(), flush=True)
    return app.run()
