"""CLI and settings: one clear line and exit status 2 for every bad setting."""

from __future__ import annotations

import contextlib
import io
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _proc import ROOT, RuntimeProcess, connect, env, poll

from runtime.config import ConfigError, Settings, parse_address, settings_from


def _run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], cwd=ROOT, env={**env(), **(extra_env or {})},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.fixture(scope="module")
def busy_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]  # type: ignore[misc]
    sock.close()


BAD = [
    (["nosuchmodule_xyz:Handler"], {}, "HANDLER", "cannot import module"),
    (["handlers:Missing"], {}, "HANDLER", "has no 'Missing'"),
    (["nonsense-name"], {}, "HANDLER", "not module:Class"),
    ([".handlers:HoldHandler"], {}, "HANDLER", "give the module's full name, not a relative one"),
    (["--max-children", "0"], {}, "--max-children", "at least 1 and at most 4096"),
    (["--max-children", "many"], {}, "--max-children", "not a whole number"),
    (["--bind", "127.0.0.1"], {}, "--bind", "not host:port"),
    (["--bind", "127.0.0.1:99999"], {}, "--bind", "0-65535"),
    (["--bind", "::1:9000"], {}, "--bind", "brackets"),
    (["--bind", "unix:"], {}, "--bind", "no socket path"),
    (["--mode", "async"], {}, "--mode", "invalid choice"),
    (["--drain-delay", "-1"], {}, "--drain-delay", "at least 0 and at most 86400 seconds"),
    (["--worker-tmp-dir", "/dev/shm"], {}, "--worker-tmp-dir", "applies to --mode prefork only"),
    (["--server", "builtins:dict"], {}, "--server", "not a socketserver.BaseServer"),
    (["--server", "nosuchmodule_xyz:Server"], {}, "--server", "cannot import"),
    ([], {"RUNTIME_MAX_CHILDREN": "lots"}, "RUNTIME_MAX_CHILDREN", "not a whole number"),
    ([], {"RUNTIME_MAX_CHILDERN": "8"}, "RUNTIME_MAX_CHILDERN", "unknown setting"),
    ([], {"RUNTIME_MODE": "turbo"}, "RUNTIME_MODE", "not one of"),
    ([], {"RUNTIME_WORKERS": "2"}, "RUNTIME_WORKERS", "applies to --mode prefork only"),
    ([], {"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER", "not one of"),
    (
        [],
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "not supported",
    ),
]


@pytest.mark.parametrize(("args", "environ", "setting", "reason"), BAD)
def test_bad_setting_gives_one_line_and_status_2(
    args: list[str], environ: dict[str, str], setting: str, reason: str
) -> None:
    result = _run(*args, "--admin", "off", extra_env=environ)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runtime: error: ")
    assert setting in lines[0] and reason in lines[0]
    assert result.stdout == ""


def test_port_in_use_is_one_line_and_status_2(busy_port: int) -> None:
    result = _run("--bind", f"127.0.0.1:{busy_port}", "--admin", "off")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"runtime: error: --bind: 127.0.0.1:{busy_port}: address already in use "
        "(another process listens there; pick another port)"
    )


def test_admin_port_in_use_is_one_line_and_status_2(busy_port: int) -> None:
    result = _run("--bind", "127.0.0.1:0", "--admin", f"127.0.0.1:{busy_port}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--admin" in lines[0] and "already in use" in lines[0]


def test_environment_configures_and_flags_win() -> None:
    s = settings_from(
        {"RUNTIME_MAX_CHILDREN": "8", "RUNTIME_MODE": "fork", "RUNTIME_TCP_NODELAY": "off",
         "PATH": "/bin"},
        {"mode": "sync"},
    )  # fmt: skip
    assert (s.max_children, s.mode, s.tcp_nodelay) == (8, "sync", False)


def test_settings_are_frozen_and_keyword_only() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.mode = "fork"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings("echo")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "transport", "address"),
    [
        ("127.0.0.1:9000", "tcp", ("127.0.0.1", 9000)),
        ("tcp://0.0.0.0:1", "tcp", ("0.0.0.0", 1)),
        ("udp://127.0.0.1:53", "udp", ("127.0.0.1", 53)),
        ("[::1]:8080", "tcp", ("::1", 8080)),
        ("unix:/tmp/x.sock", "unix", "/tmp/x.sock"),
        ("unixgram:/tmp/y.sock", "unixgram", "/tmp/y.sock"),
    ],
)
def test_parse_address(text: str, transport: str, address: object) -> None:
    parsed = parse_address(text)
    assert (parsed.transport, parsed.address) == (transport, address)


def test_config_error_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(queue_size=-1)
    assert info.value.setting == "--queue-size"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("example", "bind", "probe"),
    [
        ("echo", "127.0.0.1:0", "tcp"),
        ("http_hello", "127.0.0.1:0", "http"),
    ],
)
def test_bundled_examples_serve(example: str, bind: str, probe: str) -> None:
    rt = RuntimeProcess(example, "--bind", bind, "--drain-delay", "0")
    try:
        if probe == "tcp":
            sock = connect(rt.address)
            sock.sendall(b"hello\n")
            assert sock.makefile("rb").readline() == b"hello\n"
            sock.close()
        else:
            import urllib.request

            url = f"http://{rt.address[0]}:{rt.address[1]}/"
            with urllib.request.urlopen(url, timeout=5) as reply:
                assert reply.read() == b"hello, world\n"
        # Counted when the handler returns, which may be just after the client has its reply.
        labels = f'outcome="ok",server="{example}",transport="tcp"'
        sample = f"socketserver_requests_total{{{labels}}} 1.0"
        poll(lambda: sample in rt.get("/metrics")[2], what="the request counted")
        assert rt.get("/metrics")[0] == 200
    finally:
        rt.close()


@pytest.mark.timeout(30)
def test_udp_echo_example() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result_proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "udp_echo", "--bind", f"udp://127.0.0.1:{port}",
         "--admin", "off", "--drain-delay", "0"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert result_proc.stdout is not None
        assert f"udp://127.0.0.1:{port}" in result_proc.stdout.readline()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(b"datagram", ("127.0.0.1", port))
        assert client.recvfrom(100)[0] == b"datagram"
        client.close()
        result_proc.terminate()
        assert result_proc.wait(timeout=10) == 0
    finally:
        if result_proc.poll() is None:
            result_proc.kill()
        result_proc.communicate(timeout=10)


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    # What Kubernetes injects for a Service named "runtime" in the same namespace.
    links = {
        "RUNTIME_SERVICE_HOST": "10.0.0.7",
        "RUNTIME_SERVICE_PORT": "9000",
        "RUNTIME_SERVICE_PORT_METRICS": "9100",
        "RUNTIME_PORT": "tcp://10.0.0.7:9000",
        "RUNTIME_PORT_9000_TCP": "tcp://10.0.0.7:9000",
        "RUNTIME_PORT_9000_TCP_PROTO": "tcp",
        "RUNTIME_PORT_9000_TCP_PORT": "9000",
        "RUNTIME_PORT_9000_TCP_ADDR": "10.0.0.7",
    }
    assert settings_from({**links, "RUNTIME_MAX_CHILDREN": "3"}).max_children == 3
    with pytest.raises(ConfigError):
        settings_from({"RUNTIME_PORTS": "1"})  # a typo is still reported


def test_none_is_a_value_for_choices_and_turns_seconds_off() -> None:
    from runtime.cli import parse

    settings = parse(["--traces", "none", "--request-timeout", "none", "--request-warn-after",
                      "off"], {"RUNTIME_REQUEST_TIMEOUT": "5"})  # fmt: skip
    assert settings.traces == "none"
    assert settings.request_timeout is None and settings.request_warn_after is None


def test_a_flag_names_itself_even_when_a_variable_set_the_same_setting() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from({"RUNTIME_MODE": "fork"}, {"mode": "turbo"})
    assert info.value.setting == "--mode"


def test_the_new_settings_have_their_documented_defaults() -> None:
    s = Settings()
    assert (s.flush_timeout, s.header_timeout, s.worker_tmp_dir) == (5.0, 10.0, None)
    from runtime.cli import parse

    given = parse(["--mode", "prefork", "--flush-timeout", "0", "--header-timeout", "none",
                   "--worker-tmp-dir", "/dev/shm"], {})  # fmt: skip
    assert given.flush_timeout == 0 and given.header_timeout is None
    assert given.worker_tmp_dir == "/dev/shm"


@pytest.mark.parametrize("mode", ["thread", "prefork"])
def test_flush_timeout_and_worker_tmp_dir_reach_the_runtime(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime import app

    given: dict[str, object] = {}

    class Recorder:
        def __init__(self, server: object, **kwargs: object) -> None:
            given.update(kwargs)

        def count_dropped_log_lines(self, count: int) -> None:  # (a pre-fork pool's)
            pass

    monkeypatch.setattr(app, "route_stdlib_logging", lambda **_: None)  # no global logging
    monkeypatch.setattr(app, "Runtime", Recorder)
    monkeypatch.setattr(app, "Prefork", Recorder)
    extra = {"workers": 1, "worker_tmp_dir": "/dev/shm"} if mode == "prefork" else {}
    settings = Settings(mode=mode, bind="127.0.0.1:0", admin=None, flush_timeout=1.5, **extra)
    app.build(settings).server.server_close()
    assert given["flush_timeout"] == 1.5
    if mode == "prefork":
        assert given["worker_tmp_dir"] == "/dev/shm"


# --- the command as users read it: --version, --help, the README, the console script ---

SCRIPT = Path(sys.executable).parent / "socketserver-runtime"  # installed by pip with the package


def _help() -> str:
    from runtime import cli

    with pytest.raises(SystemExit) as info, contextlib.redirect_stdout(io.StringIO()) as out:
        cli.main(["--help"], {})
    assert info.value.code == 0
    return out.getvalue()


def _sections(text: str) -> dict[str, list[str]]:
    """--help's groups: title -> the long flags in it (``--[no-]x`` counts as ``--x``)."""
    sections: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.fullmatch(r"\S.*:", line) and not line.startswith("usage:"):
            title = line[:-1]
            sections[title] = []
        elif line.startswith("  -") and sections:  # "  --bind ADDR    host:port, ..."
            names = line.strip().split("  ")[0]
            flags = re.findall(r"--[a-z][a-z-]*", names)
            sections[title] += [flag for flag in flags if not flag.startswith("--no-")]
    return sections


def test_version_prints_the_package_version_and_exits_0() -> None:
    import platform

    import runtime

    done = _run("--version")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"socketserver-runtime {runtime.__version__} (Python {platform.python_version()})\n"
    )


def test_help_groups_the_flags() -> None:
    sections = _sections(_help())
    assert sections["pre-fork (--mode prefork)"] == [
        "--workers", "--threads", "--min-workers", "--worker-timeout", "--max-requests",
        "--max-requests-jitter", "--reuse-port", "--worker-tmp-dir",
    ]  # fmt: skip
    assert "--bind" in sections["server and its pool"]
    assert "--max-children" in sections["server and its pool"]
    assert {"--drain-delay", "--admin", "--liveness-timeout"} <= set(sections["drain and probes"])
    assert {"--request-timeout", "--header-timeout"} <= set(sections["time limits"])
    assert {"--log-level", "--traces"} <= set(sections["telemetry"])
    assert sections["options"] == ["--help", "--version", "--check-config"]


def test_help_usage_says_the_handler_is_optional_and_defaults_to_echo() -> None:
    usage, handler = _help().splitlines()[:2]
    assert usage == "usage: python -m runtime [HANDLER] [options]"
    assert handler.strip().startswith("HANDLER: module:Class")
    assert "echo (the default)" in handler


def _readme_command_line() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n", 2)[1].splitlines()  # its first code block: the synopsis


def test_readme_synopsis_agrees_with_help() -> None:
    lines = _readme_command_line()
    usage, handler = _help().splitlines()[:2]
    assert lines[0] == usage.removeprefix("usage: ")
    assert lines[1].strip() == handler.strip()
    readme: dict[str, list[str]] = {}
    for line in lines[3:]:  # "group title   --flags ...", then lines that go on with flags
        if line and not line[0].isspace():
            title, line = re.split(r"\s{2,}", line, maxsplit=1)
            readme[title] = []
        flags = re.findall(r"--(?:\[no-\])?[a-z-]+", line)
        readme[title] += [flag.replace("[no-]", "") for flag in flags]
    sections = _sections(_help())
    sections.pop("handler")  # the usage's second line
    assert {t: sorted(f) for t, f in readme.items()} == {t: sorted(f) for t, f in sections.items()}


def test_the_console_script_goes_by_its_own_name() -> None:
    import runtime

    version = subprocess.run([SCRIPT, "--version"], cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert version.returncode == 0
    assert version.stdout.startswith(f"socketserver-runtime {runtime.__version__} ")
    usage = subprocess.run([SCRIPT, "--help"], cwd=ROOT, env=env(), capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    assert usage.stdout.startswith("usage: socketserver-runtime [HANDLER] [options]\n")
    bad = subprocess.run([SCRIPT, "--max-children", "0", "--admin", "off"], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr == (
        "socketserver-runtime: error: --max-children: must be at least 1 and at most 4096, got 0\n"
    )


def test_the_console_script_imports_from_the_working_folder(tmp_path: Path) -> None:
    # As `python -m runtime` does (-m puts the working folder on sys.path; a script does not).
    (tmp_path / "app_here_11.py").write_text('raise RuntimeError("found and run")\n')
    done = subprocess.run([SCRIPT, "app_here_11:Handler", "--admin", "off"], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "socketserver-runtime: error: HANDLER: cannot import module 'app_here_11': "
        "RuntimeError: found and run (app_here_11.py, line 1)\n"
    )


def test_check_config_validates_without_binding(busy_port: int) -> None:
    """--check-config: 0 and what would be served, or 2 and the one line; the port stays
    free to whoever holds it (it is checked on a port in use: it binds nothing)."""
    ok = _run("--check-config", "http_hello", "-b", f"127.0.0.1:{busy_port}", "--admin", "off")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == (
        f"runtime: configuration OK: runtime.examples.http_hello:HelloHandler on "
        f"127.0.0.1:{busy_port} (HTTPServer, thread); admin off"
    )
    assert ok.stderr == ""
    pool = _run("--check-config", "--mode", "prefork", "-w", "3")
    assert pool.returncode == 0 and "(TCPServer, prefork, 3 workers)" in pool.stdout, pool.stderr
    for args, variables, named in (
        (["--check-config", "nosuchmodule_xyz:Handler"], {}, "HANDLER"),
        (["--check-config", "-w", "0", "--mode", "prefork"], {}, "-w"),
        (["--check-config"], {"RUNTIME_MAX_CHILDREN": "0"}, "RUNTIME_MAX_CHILDREN"),
        (["--check-config", "--admin", "nonsense:::"], {}, "--admin"),
    ):
        bad = _run(*args, extra_env=variables)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert bad.stdout == "" and len(bad.stderr.splitlines()) == 1, bad.stderr
        assert f"error: {named}" in bad.stderr or "error: --workers" in bad.stderr, bad.stderr


def test_short_flags_are_the_long_ones() -> None:
    from runtime.cli import parse

    short = parse(["-b", "127.0.0.1:7000", "-w", "3", "--mode", "prefork"], {})
    assert (short.bind, short.workers) == ("127.0.0.1:7000", 3)
    assert short == parse(["--bind", "127.0.0.1:7000", "--workers", "3", "--mode", "prefork"], {})
