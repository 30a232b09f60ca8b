"""Server processes for the benchmarks, and what ``/proc`` says about them.

A server runs in a session of its own (so its process group holds it, its
forked children and gunicorn's or the pre-fork pool's workers), with a pipe on
stdin that it watches: when the harness goes away, even by SIGKILL, the pipe
closes and the server stops itself (the runtime's pre-fork supervisor, which
does not read its stdin, gets SIGTERM from the kernel instead: see
``prefork_servers.py``).  :meth:`ServerProcess.stop` sends SIGTERM, waits, then
kills what is left of the group, while the server's pid (hence the group id)
is still ours.

The accounting reads ``/proc/<pid>/stat`` of every process of the tree:
``utime + stime`` (all threads, exited ones included) plus ``cutime +
cstime`` (children already reaped), so CPU spent in forked children that came
and went during a run is counted.
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from _harness import ROOT, HarnessError

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 10.0
#: What looks like an error in a server's stderr.
ERROR_MARKS = ("Traceback", "Error", '"level": "error"', '"level": "warning"')
#: A server's first stdout line: its port, or the runtime's ``serving NAME on tcp://HOST:PORT``.
PORT_LINE = re.compile(rb"(\d+)|serving .* on tcp://\S+:(\d+)")
#: A server's stderr is cut back to empty past this size (after it was scanned).
LOG_TRUNCATE_BYTES = 16 << 20


# -- /proc -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the harness uses."""

    pid: int
    ppid: int
    ticks: int  # utime + stime: every thread of the process, exited ones too
    child_ticks: int  # cutime + cstime: children it has reaped (and theirs)
    threads: int
    rss_pages: int


def read_stat(pid: int) -> ProcStat | None:
    """The stat of *pid*, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    # proc(5) numbers fields from 1 and the first two (pid, comm) are gone: field n is n - 3.
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        ticks=int(fields[11]) + int(fields[12]),
        child_ticks=int(fields[13]) + int(fields[14]),
        threads=int(fields[17]),
        rss_pages=int(fields[21]),
    )


def process_tree(root: int) -> list[ProcStat]:
    """*root* and all its descendants (root first), from one scan of ``/proc``."""
    by_parent: dict[int, list[ProcStat]] = {}
    top = None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is None:
            continue
        if stat.pid == root:
            top = stat
        by_parent.setdefault(stat.ppid, []).append(stat)
    if top is None:
        return []
    tree, i = [top], 0
    while i < len(tree):
        tree.extend(by_parent.get(tree[i].pid, ()))
        i += 1
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time of *root*'s tree so far: live processes and the children they reaped."""
    return sum(p.ticks + p.child_ticks for p in process_tree(root)) / CLK_TCK


def private_bytes(pid: int) -> int:
    """Memory of *pid* that no other process shares (Private_Clean + Private_Dirty)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


@dataclass(frozen=True)
class TreeUsage:
    """A snapshot of a server's tree: processes, threads, memory."""

    processes: int
    threads: int
    #: The root's resident memory plus what each descendant does not share
    #: (a forked child's copied pages, a worker's own heap): summing every
    #: process's RSS would count the pages they share once per process.
    memory_bytes: int


def tree_usage(root: int) -> TreeUsage:
    tree = process_tree(root)
    if not tree:
        return TreeUsage(0, 0, 0)
    memory = tree[0].rss_pages * PAGE_SIZE + sum(private_bytes(p.pid) for p in tree[1:])
    return TreeUsage(len(tree), sum(p.threads for p in tree), memory)


def cpu_busy_seconds(cpu: int) -> float:
    """Time CPU *cpu* was not idle since boot (user..steal of ``/proc/stat``), in seconds."""
    prefix = f"cpu{cpu} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return (user + nice + system + irq + softirq + steal) / CLK_TCK
    raise HarnessError(f"no {prefix.strip()} in /proc/stat")


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to at least *needed* (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise HarnessError(
            f"{needed} file descriptors are needed and the hard limit is {hard} (ulimit -Hn)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- server processes --------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server started by :func:`start_server`; :meth:`stop` it (always)."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]  # its stderr, opened for appending
    port: int = 0
    log_lines: int = 0
    log_bytes: int = 0
    log_errors: list[str] = field(default_factory=list)
    #: From SIGTERM to the server's exit (or to SIGKILL, at the time-out); forced: killed.
    stop_seconds: float = 0.0
    stop_forced: bool = False
    _scanned: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_port(self, timeout: float = SERVER_START_TIMEOUT) -> int:
        """Read the port the server prints on stdout once it listens: its first line,
        the port alone or the runtime's ``serving ... on tcp://HOST:PORT``."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"\n" not in data:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise HarnessError(f"server {self.name} did not print its port in time")
                chunk = os.read(stdout.fileno(), 256)
                if not chunk:
                    raise HarnessError(
                        f"server {self.name} exited before printing its port:\n{self.log_tail()}"
                    )
                data += chunk
        line = data.split(b"\n", 1)[0].strip()
        found = PORT_LINE.fullmatch(line)
        if found is None:
            raise HarnessError(f"server {self.name} printed {line!r}, not a port")
        self.port = int(found[1] or found[2])
        return self.port

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise HarnessError(
                f"server {self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, limit: int = 2000) -> str:
        self.log.flush()
        self.log.seek(max(0, self.log.seek(0, os.SEEK_END) - limit))
        return self.log.read().decode(errors="replace")

    def scan_log(self, keep: int = 5) -> None:
        """Count the lines written since the last scan and keep those that look like
        errors; past :data:`LOG_TRUNCATE_BYTES`, empty the file (appends go on at 0)."""
        self.log.seek(self._scanned)
        for raw in self.log:
            if not raw.endswith(b"\n"):  # a line being written: next time
                break
            self._scanned += len(raw)
            self.log_lines += 1
            self.log_bytes += len(raw)
            if len(self.log_errors) < keep:
                line = raw.decode(errors="replace").rstrip()
                if any(mark in line for mark in ERROR_MARKS):
                    self.log_errors.append(line[:300])
        if self._scanned > LOG_TRUNCATE_BYTES:
            self.log.truncate(0)
            self._scanned = 0

    def log_summary(self) -> str:
        """What the server wrote to stderr: line count, and the lines that look like errors."""
        if not self.log.closed:
            self.scan_log()
        if not self.log_lines:
            return ""
        text = f"{self.name} wrote {self.log_lines} lines ({self.log_bytes / 1e6:.1f} MB) to stderr"
        if self.log_errors:
            text += "; some look like errors:\n" + "\n".join(self.log_errors)
        return text

    def stop(self, timeout: float = SERVER_STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to *timeout*, then SIGKILL whatever is left of its group.

        Its stderr is scanned one last time; :meth:`log_summary` still works after."""
        process = self.process
        if process.returncode is None:
            # os.kill, not send_signal: that polls first, and reaping an exited server
            # here would free its pid (the group id) before the group is killed below.
            os.kill(process.pid, signal.SIGTERM)  # not reaped yet: the pid is still ours
            start = time.monotonic()
            # WNOWAIT: the exited server stays a zombie, so its pid, which is the
            # group id, cannot be reused before the group is killed below.
            while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() - start > timeout:
                    self.stop_forced = True
                    break
                time.sleep(0.02)
            self.stop_seconds = time.monotonic() - start
            try:
                os.killpg(process.pid, signal.SIGKILL)  # leftovers: children, workers
            except ProcessLookupError:
                pass
            process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        if not self.log.closed:
            self.scan_log()  # what it wrote while stopping, too
            self.log.close()


def start_server(name: str, cmd: Sequence[str]) -> ServerProcess:
    """Start *cmd* (which prints its port on stdout) in its own session; stderr to a file."""
    fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
    os.close(fd)
    log = open(path, "a+b")  # noqa: SIM115 - closed by ServerProcess.stop
    os.unlink(path)
    try:
        process = subprocess.Popen(
            list(cmd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise HarnessError(f"cannot start server {name}: {exc}") from exc
    return ServerProcess(name, process, log)
