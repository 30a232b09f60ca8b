"""A handler (or --server) that cannot be loaded: one line naming the module and the error,
exit status 2, and the traceback only when asked for (``--log-level debug``).

Before: a module that raised while being imported (any exception, a SyntaxError) gave
Python's traceback and exit status 1; a function, a module or the server class given as
HANDLER was taken, and failed at every connection.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from _proc import ROOT, TESTS, RuntimeProcess, env

from runtime import app, cli
from runtime.app import load_object
from runtime.config import ConfigError

# A handler module's text for each way of failing to import, and the line's end.
BROKEN = {
    "raises": (
        'import socketserver\n\nraise RuntimeError("no database configured")\n',
        r"RuntimeError: no database configured \({path}, line 3\)",
    ),
    "syntax": (
        "import socketserver\nclass Handler(socketserver.BaseRequestHandler)\n    pass\n",
        r"SyntaxError: [^\n]+ \({path}, line 2\)",
    ),
    "imports_missing": (
        "import socketserver\nimport not_installed_xyz_11\n",
        r"ModuleNotFoundError: No module named 'not_installed_xyz_11' \({path}, line 2\)",
    ),
    "calls_a_library_that_raises": (  # named at the module's own line, not the library's
        'import json\n\nCONFIG = json.loads("{not json")\n',
        r"json\.decoder\.JSONDecodeError: Expecting [^\n]+ \({path}, line 3\)",
    ),
    "exits": (  # a module that parses sys.argv, or calls sys.exit(), at import time
        "import sys\n\nsys.exit(3)\n",
        r"SystemExit: 3 \({path}, line 3\)",
    ),
}


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


def _run(
    *args: str, folder: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m runtime ARGS`` with *folder* importable; it must not start serving."""
    environ = {**env(), **(extra_env or {})}
    if folder is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(folder), environ["PYTHONPATH"]])
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args, "--bind", "127.0.0.1:0", "--admin", "off"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_handler_module_that_fails_to_import_is_one_line_naming_it_and_status_2(
    kind: str, tmp_path: Path
) -> None:
    text, tail = BROKEN[kind]
    path = _write(tmp_path, f"broken_{kind}", text)
    line = _one_line(_run(f"broken_{kind}:Handler", folder=tmp_path))
    head = f"runtime: error: HANDLER: cannot import module 'broken_{kind}': "
    assert re.fullmatch(re.escape(head) + tail.format(path=re.escape(str(path))), line), line


def test_a_server_module_that_fails_to_import_gets_the_same_line(tmp_path: Path) -> None:
    text, tail = BROKEN["raises"]
    path = _write(tmp_path, "broken_server", text)
    line = _one_line(_run("echo", "--server", "broken_server:Server", folder=tmp_path))
    head = "runtime: error: --server: cannot import module 'broken_server': "
    assert re.fullmatch(re.escape(head) + tail.format(path=re.escape(str(path))), line), line


def test_a_module_not_on_the_path_says_where_python_looks() -> None:
    line = _one_line(_run("no_such_module_11:Handler"))
    assert line == (
        "runtime: error: HANDLER: cannot import module 'no_such_module_11': no module named "
        "'no_such_module_11' on sys.path (run from the folder that holds it, or add that "
        "folder to PYTHONPATH)"
    )


@pytest.mark.parametrize(
    ("argv", "environ"),
    [(["--log-level", "debug"], {}), ([], {"RUNTIME_LOG_LEVEL": "debug"})],
)
def test_log_level_debug_prints_the_traceback_after_the_line(
    argv: list[str], environ: dict[str, str], tmp_path: Path
) -> None:
    path = _write(tmp_path, "broken_debug", BROKEN["raises"][0])
    done = _run("broken_debug:Handler", *argv, folder=tmp_path, extra_env=environ)
    assert done.returncode == 2 and done.stdout == ""
    first, *rest = done.stderr.splitlines()
    assert first.startswith("runtime: error: HANDLER: cannot import module 'broken_debug': ")
    # From the user's own code, not the runtime's or importlib's frames.
    assert rest[:3] == [
        "Traceback (most recent call last):",
        f'  File "{path}", line 3, in <module>',
        '    raise RuntimeError("no database configured")',
    ]
    assert rest[-1] == "RuntimeError: no database configured"
    assert "importlib" not in done.stderr and "runtime/app.py" not in done.stderr


def test_log_level_debug_shows_a_syntax_error_with_its_caret(tmp_path: Path) -> None:
    path = _write(tmp_path, "broken_caret", "x = (1,\ny = 2 +\n")
    done = _run("broken_caret:Handler", "--log-level", "debug", folder=tmp_path)
    assert done.returncode == 2
    first, *rest = done.stderr.splitlines()
    assert first.startswith("runtime: error: HANDLER: cannot import module 'broken_caret': ")
    assert f'  File "{path}", line' in rest[0] and rest[-1].startswith("SyntaxError: ")
    assert "Traceback" not in done.stderr  # the file, the code and the caret, as Python shows it


# What a module may hold under the name given as HANDLER, and what the line calls it.
NOT_HANDLERS = textwrap.dedent(
    """
    import functools
    import http.server
    import socketserver

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    class Other:
        pass

    number = 8000
    instance = Handler.__new__(Handler)
    def function(request, client_address, server):
        pass
    partial_function = functools.partial(function)
    """
)
WHAT = [
    ("number", "an instance of int"),
    ("instance", "an instance of Handler"),
    ("function", "a function"),
    ("partial_function", "a functools.partial of a function"),
    ("Other", "the class Other"),
    ("socketserver", "a module"),
    ("http.server.HTTPServer", "a server class (give it with --server)"),
]


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler taken must fail the test at once, not serve in the test's process."""

    def run(self: app.App) -> int:
        self.close()
        raise AssertionError(f"{self.settings.handler!r} was taken as a handler")

    monkeypatch.setattr(app.App, "run", run)
    monkeypatch.setattr(app, "route_stdlib_logging", lambda **_: None)  # no global logging


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(("name", "what"), WHAT)
def test_a_name_that_is_not_a_request_handler_class_is_one_line_and_status_2(
    name: str, what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    module = f"not_handlers_{len(name)}_{name.replace('.', '_')}"
    _write(tmp_path, module, NOT_HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main([f"{module}:{name}", "--bind", "127.0.0.1:0", "--admin", "off"], {}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"runtime: error: HANDLER: '{module}:{name}' is {what}, not a request handler class "
        "(a subclass of socketserver.BaseRequestHandler, or a functools.partial of one)\n"
    )


@pytest.mark.usefixtures("no_serving")
def test_a_missing_name_is_one_line_with_the_likely_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "typo_module_11", NOT_HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["typo_module_11:Handelr", "--admin", "off"], {}) == 2
    assert capsys.readouterr().err == (
        "runtime: error: HANDLER: module 'typo_module_11' has no 'Handelr' "
        "(did you mean 'Handler'?)\n"
    )


@pytest.mark.parametrize("kind", ["raises", "syntax", "imports_missing", "exits"])
def test_load_object_raises_config_error_with_the_original_exception_as_its_cause(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, f"cause_{kind}", BROKEN[kind][0])
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_object(f"cause_{kind}:Handler", "--server")
    assert info.value.setting == "--server"
    expected = {"raises": RuntimeError, "syntax": SyntaxError,
                "imports_missing": ModuleNotFoundError, "exits": SystemExit}[kind]  # fmt: skip
    assert type(info.value.__cause__) is expected
    sys.modules.pop(f"cause_{kind}", None)


@pytest.mark.timeout(30)
def test_a_partial_of_simple_http_request_handler_serves_its_directory(tmp_path: Path) -> None:
    # http.server's own way to serve a folder: the check must not refuse it.
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from a partial\n")
    _write(tmp_path, "static_site_11", textwrap.dedent(f"""
        import functools
        import http.server

        Handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(site)!r})
    """))  # fmt: skip
    path = os.pathsep.join([str(tmp_path), str(TESTS), str(ROOT)])
    rt = RuntimeProcess("static_site_11:Handler", "--server", "http.server:HTTPServer",
                        "--drain-delay", "0", extra_env={"PYTHONPATH": path})  # fmt: skip
    try:
        url = f"http://{rt.address[0]}:{rt.address[1]}/hello.txt"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.read() == b"hello from a partial\n"
    finally:
        rt.close()


def _busy_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("environ", "args", "line"),
    [
        ({"RUNTIME_BIND": "127.0.0.1:{busy}"}, ["--admin", "off"],
         "RUNTIME_BIND: 127.0.0.1:{busy}: address already in use"),
        ({"RUNTIME_ADMIN": "127.0.0.1:{busy}"}, ["--bind", "127.0.0.1:0"],
         "RUNTIME_ADMIN: 127.0.0.1:{busy}: address already in use"),
        ({"RUNTIME_ADMIN": "127.0.0.1:1"}, ["--bind", "127.0.0.1:0", "--admin", "127.0.0.1:{busy}"],
         "--admin: 127.0.0.1:{busy}: address already in use"),  # the flag won: named as given
        ({"RUNTIME_SERVER": "builtins:dict"}, ["--bind", "127.0.0.1:0", "--admin", "off"],
         "RUNTIME_SERVER: 'builtins:dict' is not a socketserver.BaseServer subclass"),
        ({"RUNTIME_SERVER": "no_such_module_11:S"}, ["--bind", "127.0.0.1:0", "--admin", "off"],
         "RUNTIME_SERVER: cannot import module 'no_such_module_11': no module named"),
        ({"RUNTIME_HANDLER": "no_such_module_11:H"}, ["--bind", "127.0.0.1:0", "--admin", "off"],
         "RUNTIME_HANDLER: cannot import module 'no_such_module_11': no module named"),
        ({"RUNTIME_BIND": "unix:/tmp/never-11.sock"}, ["http_hello", "--admin", "off"],
         "RUNTIME_BIND: 'http_hello' needs a tcp address"),
        ({"RUNTIME_MODE": "prefork", "RUNTIME_WORKERS": "1",
          "RUNTIME_WORKER_TMP_DIR": "/nonexistent-11/x"},
         ["--bind", "127.0.0.1:0", "--admin", "off"],
         "RUNTIME_WORKER_TMP_DIR: cannot make the pre-fork folder in /nonexistent-11/x"),
    ],
)  # fmt: skip
def test_a_start_up_error_names_the_variable_the_value_came_from(
    environ: dict[str, str], args: list[str], line: str
) -> None:
    busy = _busy_listener()
    port = busy.getsockname()[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runtime",
             *(arg.format(busy=port) for arg in args)],
            cwd=ROOT, env={**env(), **{k: v.format(busy=port) for k, v in environ.items()}},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        busy.close()
    got = _one_line(done)
    assert got.startswith("runtime: error: " + line.format(busy=port)), got
