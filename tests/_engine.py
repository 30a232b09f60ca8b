"""A private Docker engine for the image tests, and a base image made without a registry.

The tests start Debian's ``dockerd`` themselves (root, overlay2, the default bridge), with their own
data root, exec root and socket, and stop it by its pid at the end, with everything they ran in it.
No image registry is reachable from here, so the Dockerfile's ``PYTHON_IMAGE`` is a base image made
locally: ``debootstrap --variant=minbase bookworm`` with Debian's Python 3.11, a virtual environment
first on ``PATH`` (so ``python`` and ``pip`` resolve as in the official ``python`` image) and this
machine's CA bundle (so ``pip`` inside the build reaches the package index as the host does), then
``docker import``. The official image stays the Dockerfile's default for users.

Debian's client (``/usr/bin/docker``, 20.10) is used on purpose: with ``DOCKER_BUILDKIT=1`` its
``docker build`` is BuildKit's, with no buildx plugin; a newer client elsewhere on ``PATH`` would
insist on buildx, which Debian does not package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/venv"
BASE_CHANGES = (
    f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python"]',
)
#: The made base image is kept here between runs on one machine (a new machine makes it again).
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "socketserver-runtime"


class EngineError(AssertionError):
    """The engine, a build or a docker command failed: the message carries what it printed."""


def missing_tools() -> list[str]:
    return [tool for tool in (DOCKER, DOCKERD, DEBOOTSTRAP) if not os.access(tool, os.X_OK)]


class Engine:
    """One ``dockerd`` of the test's own, reachable only through its socket."""

    def __init__(self) -> None:
        # Short paths: containerd puts unix sockets under the exec root (108 bytes at most).
        self.root = Path(tempfile.mkdtemp(prefix="ssrd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1"}
        self.proc: subprocess.Popen[bytes] | None = None

    # -- the daemon ------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [DOCKERD, "--data-root", str(self.root / "data"), "--exec-root",
                 str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"),
                 "--host", f"unix://{self.socket}", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped by pgid, with containerd
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self.run("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)  # the poll interval of a deadline-bounded wait

    def stop(self) -> None:
        """Remove every container, stop dockerd by pid (its group if it hangs), free the disk."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.run("ps", "--all", "--quiet", check=False).stdout.split()
            if ids:
                self.run("rm", "--force", *ids, check=False, timeout=60)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # A daemon killed mid-way can leave its overlay mounts behind.
        remove_tree(self.root)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- commands --------------------------------------------------------------------------------

    def run(
        self, *args: str, check: bool = True, timeout: float = 60.0, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, timeout=timeout,
            input=stdin.decode() if stdin is not None else None, text=True,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        return result

    def inspect(self, name: str) -> dict[str, object]:
        data = json.loads(self.run("inspect", name).stdout)
        assert isinstance(data, list) and len(data) == 1
        item = data[0]
        assert isinstance(item, dict)
        return item

    def host_port(self, container: str, port: int) -> int:
        """The 127.0.0.1 port the engine published ``port`` on (``-p 127.0.0.1::port``)."""
        out = self.run("port", container, f"{port}/tcp").stdout.split()
        return int(out[0].rsplit(":", 1)[1])

    # -- images ----------------------------------------------------------------------------------

    def import_base(self, tag: str) -> float:
        """Make the base image (or take it from the cache) and import it; the seconds it took."""
        started = time.monotonic()
        tarball = base_tarball()
        with tarball.open("rb") as data:
            result = subprocess.run(
                [DOCKER, "import", *(arg for c in BASE_CHANGES for arg in ("--change", c)),
                 "-", tag],
                env=self.env, stdin=data, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        if result.returncode != 0:
            raise EngineError(f"docker import exited {result.returncode}: {result.stderr}")
        return time.monotonic() - started

    def build(self, context: Path, tag: str, build_args: dict[str, str]) -> str:
        """``docker build`` with BuildKit; the build's plain progress output."""
        args = [arg for k, v in build_args.items() for arg in ("--build-arg", f"{k}={v}")]
        result = self.run(
            "build", "--progress=plain", *args, "--tag", tag, str(context), timeout=600
        )
        return result.stdout + result.stderr


def _recipe() -> str:
    return json.dumps(
        [SUITE, MIRROR, PACKAGES, VENV, BASE_CHANGES,
         hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest()],
    )  # fmt: skip


def base_tarball() -> Path:
    """The base image's root filesystem as a tar, made with debootstrap unless cached."""
    key = hashlib.sha256(_recipe().encode()).hexdigest()[:16]
    tarball = CACHE / f"base-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ssr-rootfs-", dir="/var/tmp"))
    rootfs = work / "rootfs"
    try:
        steps: list[list[str]] = [
            [DEBOOTSTRAP, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(rootfs), MIRROR],
            ["chroot", str(rootfs), "python3", "-m", "venv", VENV],
        ]  # fmt: skip
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise EngineError(f"{' '.join(step)} exited {result.returncode}:\n"
                                  f"{result.stdout[-3000:]}{result.stderr[-3000:]}")  # fmt: skip
        shutil.copyfile(CA_BUNDLE, rootfs / CA_BUNDLE.relative_to("/"))
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "--create", "--file", str(partial), "--directory",
             str(rootfs), "."],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        partial.rename(tarball)
    finally:
        remove_tree(work)
    return tarball


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def remove_tree(path: Path) -> None:
    """Unmount what is mounted below ``path``, then remove it; never remove through a mount.

    A debootstrap that failed half-way can leave the host's /proc, /sys or /dev mounted inside
    its root: removing the tree through them would delete the host's files.
    """
    for mount in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
    if _mounts_under(path):
        raise EngineError(f"still mounted below {path}, left in place: {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)
