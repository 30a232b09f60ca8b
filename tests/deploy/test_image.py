"""The image, for real: built from the Dockerfile by BuildKit and run by a Docker engine.

The engine is Debian's ``dockerd``, started by these tests and stopped by them (``tests/_engine.py``
says how, and how the base image is made without a registry). Two ways of running the image:

- as ``docker run IMAGE`` runs it: the echo port answers, ``/readyz`` is 200, the image's own
  HEALTHCHECK reaches ``healthy``, the process runs as uid 10001, and ``docker stop`` drains (not
  ready, still serving, then exit 0 with the drain in the logs) within docker's default stop time;
- as the Kubernetes manifests run it (``deploy/kubernetes``): the Deployment's command, the
  ConfigMap's variables, its security context (read-only root, the emptyDir mounts writable, no
  capabilities, no privilege escalation, uid and gid) and its limits; in thread mode as shipped,
  and in pre-fork mode, whose metric files need the writable ``/tmp``.

Traffic goes only to 127.0.0.1: the engine publishes the container's ports there.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _dockerfile import ROOT, pinned
from _engine import Engine, missing_tools
from _proc import poll, send_all_read_all
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.timeout(900)

IMAGE = "socketserver-runtime:test"
BASE = "socketserver-runtime-base:bookworm"
APP_PORT, ADMIN_PORT = 9000, 9100
KUBERNETES = ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    missing = missing_tools()
    assert not missing, f"{missing} missing: `make deps` installs docker.io and debootstrap"
    eng = Engine()
    try:
        eng.start()
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    engine.import_base(BASE)
    log = engine.build(ROOT, IMAGE, {"PYTHON_IMAGE": BASE})
    assert "naming to docker.io/library/" + IMAGE in log, log[-3000:]
    return IMAGE


# -- helpers ---------------------------------------------------------------------------------------


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0  # not answering (the engine's proxy closes the connection when nobody listens)


def _echo(port: int, payload: bytes) -> bytes:
    try:
        return send_all_read_all(("127.0.0.1", port), payload)
    except OSError:
        return b""


def _state(engine: Engine, name: str) -> dict[str, Any]:
    state = engine.inspect(name)["State"]
    assert isinstance(state, dict)
    return state


def _uids(pid: int) -> tuple[list[int], list[int]]:
    """The real, effective, saved and fs uids and gids of a host process, as the kernel has them."""
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            fields[key] = [int(v) for v in value.split()]
    return fields["Uid"], fields["Gid"]


def _log_events(engine: Engine, name: str) -> list[dict[str, Any]]:
    result = engine.run("logs", name)
    lines = (result.stdout + result.stderr).splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _wait_serving(engine: Engine, name: str, app: int) -> None:
    """Until the echo port answers through the engine; at once, with its logs, if it exited."""

    def serving() -> bool:
        if not _state(engine, name)["Running"]:
            logs = engine.run("logs", name, check=False)
            raise AssertionError(f"{name} exited: {(logs.stdout + logs.stderr)[-3000:]}")
        return _echo(app, b"hello\n") == b"hello\n"

    poll(serving, 60, "the echo port through the engine")


def _run_serving(engine: Engine, name: str, *run_args: str) -> tuple[int, int, bytes]:
    """``docker run`` with both ports published on 127.0.0.1, until it serves: the app and
    admin ports, and ``/metrics`` once a request was counted (``/readyz`` was 200)."""
    engine.run(
        "run", "--detach", "--name", name,
        "--publish", f"127.0.0.1::{APP_PORT}", "--publish", f"127.0.0.1::{ADMIN_PORT}", *run_args,
    )  # fmt: skip
    app, admin = engine.host_port(name, APP_PORT), engine.host_port(name, ADMIN_PORT)
    _wait_serving(engine, name, app)
    assert _get(f"http://127.0.0.1:{admin}/readyz") == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read()
    assert b'socketserver_requests_total{outcome="ok",server="echo"' in metrics
    return app, admin, metrics


def _stop_and_watch_drain(engine: Engine, name: str, app: int, admin: int, *stop: str) -> float:
    """``docker stop``: while it runs, /readyz fails, /livez holds, the app still serves; the
    seconds the stop took."""
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def stop_it() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = engine.run("stop", *stop, name, check=False, timeout=120)
        finally:
            outcome["seconds"] = time.monotonic() - started
            done.set()

    threading.Thread(target=stop_it, daemon=True).start()
    poll(lambda: _get(f"http://127.0.0.1:{admin}/readyz") == 503, 10, "/readyz 503 after stop")
    assert not done.is_set(), "the container stopped without a drain delay"
    assert _get(f"http://127.0.0.1:{admin}/livez") == 200, "alive while draining"
    assert _echo(app, b"still here\n") == b"still here\n", "serving while draining"
    assert done.wait(120), "docker stop did not return"
    assert outcome["result"].returncode == 0, outcome["result"].stderr
    seconds: float = outcome["seconds"]
    return seconds


def _assert_drained_cleanly(engine: Engine, name: str) -> None:
    state = _state(engine, name)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    events = _log_events(engine, name)
    names = [e["event"] for e in events]
    assert "drain started" in names, names
    drain = next(e for e in events if e["event"] == "drain started")
    assert drain["signal"] == "SIGTERM", drain
    stopped = [e for e in events if e["event"] == "lifecycle" and e.get("state") == "stopped"]
    assert stopped and stopped[-1]["previous"] == "draining", names
    assert not [e for e in events if e.get("level") in ("error", "critical")], events


# -- the image as `docker run` runs it -------------------------------------------------------------


def test_image_serves_turns_healthy_as_uid_10001_and_drains_on_docker_stop(
    engine: Engine, image: str
) -> None:
    name = "ssr-plain"
    app, admin, _ = _run_serving(engine, name, image)

    # The process as the kernel sees it from the host: uid and gid 10001, every one of them.
    uids, gids = _uids(int(_state(engine, name)["Pid"]))
    assert set(uids) == {10001} and set(gids) == {10001}, (uids, gids)

    # The image's HEALTHCHECK, run by the engine on its own schedule.
    poll(
        lambda: _state(engine, name)["Health"]["Status"] == "healthy",
        90, "the HEALTHCHECK to report healthy",
    )  # fmt: skip
    health = _state(engine, name)["Health"]
    assert health["FailingStreak"] == 0 and health["Log"][-1]["ExitCode"] == 0, health

    # docker's default stop time (10 s) covers the image's drain delay when nothing is in flight.
    seconds = _stop_and_watch_drain(engine, name, app, admin)
    assert seconds < 10, f"docker stop took {seconds:.1f}s: the engine killed it"
    _assert_drained_cleanly(engine, name)


# -- the image as the Kubernetes manifests run it -------------------------------------------------


def _manifest(kind: str) -> dict[str, Any]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                return doc
    raise AssertionError(f"no {kind} in {KUBERNETES}")


def _size(quantity: str) -> str:
    """A Kubernetes quantity (64Mi, 256Mi) as docker spells it (64m, 256m)."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for suffix, unit in units.items():
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    return quantity


def kubernetes_run_args() -> tuple[list[str], list[str], int]:
    """``docker run`` flags, the command, and the grace period that match the Deployment's pod."""
    pod = _manifest("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = _manifest("ConfigMap")["data"]
    pod_security, security = pod["securityContext"], container["securityContext"]
    args = [
        "--user", f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}",
        "--group-add", str(pod_security["fsGroup"]),
        "--memory", _size(container["resources"]["limits"]["memory"]),
        "--cpus", str(container["resources"]["limits"]["cpu"]),
    ]  # fmt: skip
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        empty_dir = volumes[mount["name"]]["emptyDir"]
        # An emptyDir is a directory anyone in the pod may write (mode 0777); fsGroup owns it.
        options = [f"mode=1777,gid={pod_security['fsGroup']}"]
        if "sizeLimit" in empty_dir:
            options.append("size=" + _size(empty_dir["sizeLimit"]))
        args += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
    for key, value in config.items():
        args += ["--env", f"{key}={value}"]
    command = container["command"]
    return [*args, "--entrypoint", command[0]], command[1:], pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize(
    "extra_env",
    [{}, {"RUNTIME_MODE": "prefork", "RUNTIME_WORKERS": "2"}],
    ids=["as-shipped", "prefork"],
)
def test_image_runs_as_the_kubernetes_manifests_run_it(
    engine: Engine, image: str, extra_env: dict[str, str]
) -> None:
    flags, command, grace = kubernetes_run_args()
    assert "--read-only" in flags and "ALL" in flags, flags  # what this test is about
    name = "ssr-k8s-" + ("prefork" if extra_env else "thread")
    env_flags = [arg for k, v in extra_env.items() for arg in ("--env", f"{k}={v}")]
    app, admin, metrics = _run_serving(engine, name, *flags, *env_flags, image, *command)
    if extra_env:  # pre-fork: the workers' metric files, merged by the supervisor's /metrics
        assert b"socketserver_worker_processes" in metrics, metrics[:2000]

    # The root filesystem is read-only, and the emptyDir mount is the writable scratch.
    probe = (
        "import errno, tempfile\n"
        "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "with tempfile.NamedTemporaryFile(dir='/tmp') as f:\n    f.write(b'x'); print('tmp ok')\n"
    )
    out = engine.run("exec", name, "python", "-c", probe).stdout.splitlines()
    assert out == ["EROFS", "tmp ok"], out
    uids, _ = _uids(int(_state(engine, name)["Pid"]))
    assert set(uids) == {10001}, uids

    # kubelet's stop: SIGTERM, then SIGKILL after terminationGracePeriodSeconds.
    seconds = _stop_and_watch_drain(engine, name, app, admin, "--time", str(grace))
    assert seconds < grace, f"docker stop took {seconds:.1f}s of the {grace}s grace period"
    _assert_drained_cleanly(engine, name)


def test_the_image_ships_the_pinned_versions(engine: Engine, image: str) -> None:
    """The Dockerfile builds its wheels with constraints.txt: the image runs the dependency
    versions the tests ran (tests/deploy/test_constraints.py checks the tests' side)."""
    listing = engine.run(
        "run", "--rm", "--entrypoint", "python", image, "-c",
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    ).stdout  # fmt: skip
    shipped = {canonicalize_name(name): version for name, version in json.loads(listing).items()}
    assert {name: shipped.get(name) for name in pinned()} == pinned()
