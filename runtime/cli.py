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

from ._catalog import EXAMPLES
from ._version import __version__
from .app import StartupError, build, check
from .config import (
    GROUPS,
    ConfigError,
    Settings,
    declared,
    environment_variables,
    flag,
    help_text,
    named_as_given,
    parse_value,
    settings_from,
)
from .lifecycle import SignalsWhileStarting

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
    p.add_argument(
        "--check-config",
        action="store_true",
        default=False,
        help="check the settings, the handler (imported) and the server class, print what "
        "would be served, and exit 0, or 2 with the problem; binds no socket",
    )
    a = p.add_argument_group("handler").add_argument
    a(
        "handler",
        nargs="?",
        metavar="HANDLER",
        help="module:Class of a socketserver request handler (a BaseRequestHandler subclass, "
        "or a functools.partial of one), or an example name (default: echo)",
    )
    for group in GROUPS:  # every setting's flag, as declared in runtime.config
        add = p.add_argument_group(group).add_argument
        for f in declared():
            if f.metadata["group"] != group:
                continue
            options: dict[str, Any] = {"help": help_text(f.name)}
            if str(f.type).startswith("bool"):
                options["action"] = argparse.BooleanOptionalAction
            elif f.metadata["choices"]:
                options["choices"] = f.metadata["choices"]
            else:
                options["metavar"] = f.metadata["metavar"]
            if f.metadata.get("repeat"):
                options["action"] = "append"
            short = f.metadata.get("short")
            add(*((short,) if short else ()), flag(f.name), **options)
    return p


def _parse(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    prog: str = "python -m runtime",
    name: str = PROG,
) -> tuple[Settings, dict[str, str], bool]:
    """:func:`parse`, which settings came from a variable (setting -> variable), and
    whether ``--check-config`` was given."""
    args = _parser(prog, name).parse_args(argv)
    checking = vars(args).pop("check_config", False)
    separators = {f.name: f.metadata["repeat"] for f in declared()}
    raw = {  # a flag given more than once: its values as its variable lists them
        key: separators[key].join(value) if isinstance(value, list) else value
        for key, value in vars(args).items()
        if value is not None  # not given
    }
    overrides = {
        key: parse_value(key, value, flag(key)) if isinstance(value, str) else value
        for key, value in raw.items()
    }
    settings = settings_from(environ, overrides)
    variables = environment_variables(environ)
    given = {key: var for key, var in variables.items() if key not in overrides}
    return settings, given, bool(checking)


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
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["export"]:  # not a handler: neither module:Class nor an example
        from .export import main as export

        return export(words[1:], prog)
    if name == SCRIPT:
        _working_folder_importable()
    settings: Settings | None = None
    from_environment: dict[str, str] = {}
    # A stop signal from here on is kept until the engine can drain: once bound, the
    # kernel queues connections, and the default action would reset them.
    with SignalsWhileStarting() as early:
        try:
            settings, from_environment, checking = _parse(
                argv, os.environ if environ is None else environ, prog, name
            )
            if checking:
                print(f"{name}: configuration OK: {check(settings).describe()}", flush=True)
                return 0
            app = build(settings)
        except (ConfigError, StartupError) as exc:
            # Named as the user gave it: RUNTIME_BIND, not --bind, when that set the address.
            setting = named_as_given(exc.setting, from_environment)
            print(f"{name}: error: {setting}: {exc.message}", file=sys.stderr, flush=True)
            if exc.__cause__ is not None and settings is not None and settings.log_level == "debug":
                _print_traceback(exc.__cause__)
            return 2
        # Printed once a signal is safe to send: scripts take the line as "up".
        return app.run(
            on_serving=lambda: print(app.describe(), flush=True), received=early.received
        )
