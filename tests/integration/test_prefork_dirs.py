"""The pre-fork supervisor's folder (the workers' metric files and stacks).

Where it goes (``--worker-tmp-dir``, else the system's temporary folder), what a
machine that cannot hold it gets (one line naming the setting, status 2: a read-only
root filesystem gave a 29-line traceback), and how the next supervisor tells a dead
one's folder from a live one's: by a lock the supervisor and its workers hold while
any of them lives, not by its pid (in a container every supervisor is pid 1, so every
SIGKILLed one's folder stayed).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _proc import ROOT, RuntimeProcess, env, poll

from runtime.prefork import _remove_stale_dirs

PREFIX = "socketserver-runtime-prefork-"
FAST = ["--drain-delay", "0", "--poll-interval", "0.1", "--log-format", "json"]


def folders(base: Path) -> list[Path]:
    """The supervisor folders in *base* (hidden ones being made included)."""
    return sorted(p for p in base.iterdir() if p.name.lstrip(".").startswith(PREFIX))


def make_folder(base: Path, pid: int, *, lock: bool = True, hidden: bool = False) -> Path:
    """A folder as a supervisor of pid *pid* leaves it (with a lock file, or as older versions)."""
    path = base / f"{'.' if hidden else ''}{PREFIX}{pid}-{len(list(base.iterdir()))}abc"
    (path / "metrics").mkdir(parents=True)
    (path / "metrics" / "counter_w0.db").write_bytes(bytes(8))
    if lock:
        (path / "lock").touch()
    return path


def unlocked(folder: Path) -> bool:
    """Whether nobody holds *folder*'s lock (taken and released at once)."""
    fd = os.open(folder / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


@contextlib.contextmanager
def lock_held_by_another_process(folder: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); sys.stdin.read()", str(folder / "lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # it exits
        holder.wait(10)


# -- the sweep: by lock, not pid ------------------------------------------------------------


def test_a_folder_whose_lock_nobody_holds_is_removed_though_its_pid_lives(tmp_path: Path) -> None:
    # The pid in the name is alive (this test's), as pid 1 always is in a container.
    stale = make_folder(tmp_path, os.getpid())
    _remove_stale_dirs(str(tmp_path))
    assert not stale.exists()


def test_a_folder_whose_lock_a_live_process_holds_is_kept(tmp_path: Path) -> None:
    # Its pid in the name is dead: the lock says it is in use (an orphaned worker, or
    # a supervisor in another PID namespace sharing the folder).
    live = make_folder(tmp_path, dead_pid())
    with lock_held_by_another_process(live):
        _remove_stale_dirs(str(tmp_path))
        assert live.exists() and (live / "metrics" / "counter_w0.db").exists()
    _remove_stale_dirs(str(tmp_path))  # the holder is gone: now it is stale
    assert not live.exists()


def test_folders_of_older_versions_and_folders_being_made(tmp_path: Path) -> None:
    old_dead = make_folder(tmp_path, dead_pid(), lock=False)  # no lock file: judged by pid
    old_live = make_folder(tmp_path, os.getpid(), lock=False)
    being_made = make_folder(tmp_path, dead_pid(), lock=False, hidden=True)  # not locked yet
    made_then_killed = make_folder(tmp_path, os.getpid(), hidden=True)  # locked, then died
    other = tmp_path / "someone-elses"
    other.mkdir()
    not_a_folder = tmp_path / f"{PREFIX}{dead_pid()}-file"
    not_a_folder.write_text("x")
    _remove_stale_dirs(str(tmp_path))
    assert not old_dead.exists() and old_live.exists()
    assert being_made.exists() and not made_then_killed.exists()
    assert other.exists() and not_a_folder.exists()


def test_the_sweep_of_a_folder_that_does_not_exist_does_nothing(tmp_path: Path) -> None:
    _remove_stale_dirs(str(tmp_path / "missing"))  # making the folder reports it


@pytest.mark.timeout(60)
def test_a_supervisor_s_start_sweeps_its_temp_dir_by_lock_not_pid(tmp_path: Path) -> None:
    stale = make_folder(tmp_path, os.getpid())  # a live pid, an unlocked folder
    live = make_folder(tmp_path, dead_pid())
    with lock_held_by_another_process(live):
        rt = RuntimeProcess("echo", "--mode", "prefork", "--workers", "1", *FAST,
                            extra_env={"TMPDIR": str(tmp_path)})  # fmt: skip
        try:
            (own,) = [p for p in folders(tmp_path) if p not in (stale, live)]
            assert not stale.exists() and live.exists()
            assert not unlocked(own)  # held while it runs
            poll(rt.ready, what="the pool to be ready")  # (signals handled from then on)
            rt.signal(signal.SIGTERM)
            code, err = rt.wait()
            assert code == 0, err
            assert not own.exists()
        finally:
            rt.close()


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (it holds no files any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _kill_with_workers(rt: RuntimeProcess) -> None:
    """SIGKILL a supervisor and its workers, as an OOM kill or `docker kill` would."""
    poll(rt.ready, what="the pool to be ready")
    events = [json.loads(x) for x in rt.stderr_lines() if x.startswith("{")]
    workers = [int(x["pid"]) for x in events if x.get("event") == "worker started"]
    assert len(workers) == 2
    # Stopped first, the supervisor reaps no worker: their pids cannot be reused meanwhile.
    rt.proc.send_signal(signal.SIGSTOP)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    rt.proc.kill()
    rt.proc.wait(10)
    poll(lambda: all(_gone(pid) for pid in workers), what="the workers to be gone")


@pytest.mark.timeout(120)
def test_folders_of_killed_supervisors_are_removed_by_the_next_start(tmp_path: Path) -> None:
    args = ["echo", "--mode", "prefork", "--workers", "2", *FAST, "--worker-tmp-dir", str(tmp_path)]
    started: list[RuntimeProcess] = []
    try:
        # Both up at once (a second start would sweep the first's folder once it is dead).
        started += [RuntimeProcess(*args), RuntimeProcess(*args)]
        for rt in started:
            _kill_with_workers(rt)
        stale = folders(tmp_path)
        assert len(stale) == 2  # nobody cleaned up
        third = RuntimeProcess(*args)
        started.append(third)
        assert [p for p in folders(tmp_path) if p in stale] == []  # its start removed both
        assert len(folders(tmp_path)) == 1  # its own
        poll(third.ready, what="the third pool to be ready")
        third.signal(signal.SIGTERM)
        code, err = third.wait()
        assert code == 0, err
        assert folders(tmp_path) == []
    finally:
        for rt in started:
            rt.close()


# -- the same as pid 1 of a PID namespace (a container) ------------------------------------


def _unshare_works(*flags: str) -> str:
    """An empty string if ``unshare FLAGS true`` works here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    try:
        done = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True,
                              timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else done.stderr.strip() or f"status {done.returncode}"


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


PID_NAMESPACE = ["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]


class _InNamespace:
    """``python -m runtime`` as pid 1 of a new PID namespace, as a container's entrypoint."""

    def __init__(self, tmp: Path, log: Path) -> None:
        cmd = ["unshare", *PID_NAMESPACE, sys.executable, "-m", "runtime", "echo",
               "--mode", "prefork", "--workers", "2", *FAST, "--bind", "127.0.0.1:0",
               "--admin", "127.0.0.1:0"]  # fmt: skip
        # TMPDIR, not --worker-tmp-dir: the same command runs the code before the fix.
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**env(), "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
            stderr=self.log, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # serving ...
        found = re.search(r"admin (http://[\d.]+:\d+)/", self.proc.stdout.readline())
        assert found, log.read_text()
        self.admin = found.group(1)

    def supervisor(self) -> int:
        """Its pid here (pid 1 in its namespace): the unshare process's one child."""
        (child,) = _children(self.proc.pid)
        return child

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.admin + "/readyz", timeout=5) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # --kill-child: the supervisor too, and so the namespace
            self.proc.wait(10)
        self.log.close()


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    bool(_unshare_works(*PID_NAMESPACE)),
    reason=f"no PID namespace here: {_unshare_works(*PID_NAMESPACE)}",
)
def test_as_pid_1_the_folders_of_killed_supervisors_are_removed(tmp_path: Path) -> None:
    tmp, logs = tmp_path / "tmp", tmp_path / "logs"
    tmp.mkdir()
    logs.mkdir()
    started: list[_InNamespace] = []
    try:
        # Both up at once: the second's start must keep the first's folder (it is in use).
        started += [_InNamespace(tmp, logs / "0.log"), _InNamespace(tmp, logs / "1.log")]
        for ns in started:
            poll(ns.ready, what="the pool to be ready")
        assert len(folders(tmp)) == 2
        killed: list[int] = []
        for ns in started:
            supervisor = ns.supervisor()
            killed += [supervisor, *_children(supervisor)]  # the workers, as pids here
            # SIGKILL of a namespace's pid 1 kills every process in it: the workers too.
            os.kill(supervisor, signal.SIGKILL)
            ns.proc.wait(10)
        poll(lambda: all(_gone(pid) for pid in killed), what="the namespaces' processes gone")
        stale = folders(tmp)
        assert [p.name.split("-")[3] for p in stale] == ["1", "1"]  # both were pid 1
        third = _InNamespace(tmp, logs / "third.log")
        started.append(third)
        # Its start removed both, though pid 1 (itself) lives.
        assert [p for p in folders(tmp) if p in stale] == []
        assert len(folders(tmp)) == 1  # its own
        poll(third.ready, what="the third pool to be ready")
        os.kill(third.supervisor(), signal.SIGTERM)
        assert third.proc.wait(30) == 0, (logs / "third.log").read_text()
        assert folders(tmp) == []
    finally:
        for ns in started:
            ns.close()


# -- where the folder goes, and when it cannot be made ---------------------------------------


def _run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "echo", "--mode", "prefork", "--workers", "1",
         "--bind", "127.0.0.1:0", "--admin", "off", *args],
        cwd=ROOT, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("given", ["flag", "variable"])
@pytest.mark.parametrize(
    ("where", "reason"), [("/proc", "No such file or directory"), ("file", "Not a directory")]
)
def test_a_worker_tmp_dir_that_cannot_hold_a_folder_is_one_line_and_status_2(
    where: str, reason: str, given: str, tmp_path: Path
) -> None:
    # As root, permission bits stop nothing: no one can make a folder below /proc or a file.
    path = where
    if where == "file":
        path = str(tmp_path / "a-file")
        Path(path).write_text("")
    if given == "flag":
        done = _run("--worker-tmp-dir", path)
    else:
        done = _run(extra_env={"RUNTIME_WORKER_TMP_DIR": path})
    assert done.returncode == 2
    assert done.stdout == ""
    named = "--worker-tmp-dir" if given == "flag" else "RUNTIME_WORKER_TMP_DIR"  # as given
    assert done.stderr == (
        f"runtime: error: {named}: cannot make the pre-fork folder in {path} ({reason}); "
        "set --worker-tmp-dir (RUNTIME_WORKER_TMP_DIR) to a writable folder, e.g. /dev/shm\n"
    )


# The candidates tempfile.gettempdir() tries ($TMPDIR is left out of the environment),
# read-only in a mount namespace of this process's own: what a container with
# readOnlyRootFilesystem sees.  The host's mounts are not touched.
READ_ONLY_ROOT = (
    'mount -o remount,bind,ro / || exit 97; for d in /tmp /var/tmp /usr/tmp "$PWD"; do '
    'if [ -d "$d" ]; then mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 97; '
    'fi; done; exec "$@"'
)
MOUNT_NAMESPACE = ["--mount", "--propagation", "private"]


def _read_only_root(*args: str) -> subprocess.Popen[str]:
    cmd = ["unshare", *MOUNT_NAMESPACE, "sh", "-c", READ_ONLY_ROOT, "sh",
           sys.executable, "-m", "runtime", "echo", "--mode", "prefork", "--workers", "1",
           "--bind", "127.0.0.1:0", "--admin", "off", *FAST, *args]  # fmt: skip
    environ = {k: v for k, v in env().items() if k not in ("TMPDIR", "TEMP", "TMP")}
    return subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    bool(_unshare_works(*MOUNT_NAMESPACE)),
    reason=f"no mount namespace here: {_unshare_works(*MOUNT_NAMESPACE)}",
)
def test_a_read_only_root_is_one_line_naming_the_setting_and_dev_shm_works() -> None:
    proc = _read_only_root()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert out == ""
    assert err == (
        "runtime: error: --worker-tmp-dir: no writable temporary folder ($TMPDIR, /tmp, "
        "/var/tmp, /usr/tmp, the working one); mount a writable volume on /tmp (an emptyDir) "
        "or set --worker-tmp-dir (RUNTIME_WORKER_TMP_DIR) to a writable folder, e.g. /dev/shm\n"
    )
    # The fix it names works: the same read-only root, with /dev/shm (a tmpfs of its own).
    proc = _read_only_root("--worker-tmp-dir", "/dev/shm")
    try:
        assert proc.stdout is not None
        found = re.search(r"on tcp://([\d.]+):(\d+)", proc.stdout.readline())
        assert found, proc.stderr.read() if proc.stderr else ""
        with socket.create_connection((found.group(1), int(found.group(2))), timeout=10) as sock:
            sock.sendall(b"hello\n")
            assert sock.makefile("rb").readline() == b"hello\n"
        mine = [p for p in folders(Path("/dev/shm")) if p.name.startswith(f"{PREFIX}{proc.pid}-")]
        assert len(mine) == 1
        proc.send_signal(signal.SIGTERM)  # sh exec'd python: the pid is the supervisor's
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not mine[0].exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
