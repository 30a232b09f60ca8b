"""Pre-fork servers for the benchmarks: the runtime's own command line, ``--mode prefork``.

``python bench/prefork_servers.py NAME [--cpu K] [--exit-on-stdin-eof]`` pins
itself to CPU *K*, then replaces itself (``exec``) by ``python -m runtime HANDLER
--mode prefork --workers 2 ...``: the server's pid is the supervisor's, and its
process tree is the supervisor and its workers (as gunicorn's is its master and
workers), all on CPU *K*.  The runtime prints ``serving ... on
tcp://127.0.0.1:PORT`` as its first stdout line; the harness reads the port
from it.  With ``--exit-on-stdin-eof`` the supervisor gets SIGTERM when the
harness dies (``PR_SET_PDEATHSIG``; the runtime does not watch its stdin).

Every server: 2 workers, ``--backlog 1024`` (the others' ``request_queue_size``),
access log off, no traces (``--traces none``), metrics on (always), the admin
port on 127.0.0.1:0, ``--drain-delay 0`` (SIGTERM stops it at once, gracefully),
JSON logs to stderr, the runtime's defaults otherwise.  ``RUNTIME_*`` and
``OTEL_*`` variables are removed from the environment, so the command line is
the whole configuration.

- ``runtime-prefork-http``: sync workers (``--threads 0``) serving the
  ``http_hello`` example's handler with ``Connection: close``
  (``prefork_handlers.HelloCloseHandler``), on ``http.server.HTTPServer`` as
  ``http_hello`` is: gunicorn's sync worker, one request per connection
- ``runtime-prefork-http-reuseport``: the same, each worker on its own
  SO_REUSEPORT listener (``--reuse-port``)
- ``runtime-prefork-http-threads``: the pool as it would be deployed for HTTP:
  32 threads per worker (``--threads 32``) serving the ``http_hello`` example's
  handler itself (``runtime.examples.http_hello:HelloHandler``, HTTP/1.1,
  keep-alive: the handler ``runtime-http`` serves) on ``http.server.HTTPServer``.
  A keep-alive connection holds a thread for the whole run, and a worker with
  threads takes a connection from the shared listener only when one of its
  threads is free (``accept_when_busy = False``), so 2 x 32 is the smallest pool
  that serves all of wrk's 64 connections: with 31 per worker two connections
  sat in the accept queue for the whole run (``ss``: never written to), with 16
  per worker 32 did, and wrk reported no time-out either time (and more req/s)
- ``runtime-prefork``: the line-echo handler of ``echo_servers.py``, 64 threads
  per worker (``--threads 64``: 128 in all, ``runtime-lean``'s ``max_children``;
  sync workers would serve only two keep-alive clients)
- ``runtime-prefork-reuseport``: the same with ``--reuse-port``
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

from echo_servers import ROOT, parse_args, prepare_process

BENCH = ROOT / "bench"
WORKERS = 2
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class PreforkServer:
    handler: str  # module:Class, importable from bench/ or this checkout
    threads: int  # per worker; 0: sync workers
    reuse_port: bool = False
    server_class: str | None = None  # --server

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "runtime", self.handler, "--mode", "prefork",
            "--workers", str(WORKERS), "--threads", str(self.threads),
            "--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--backlog", "1024",
            "--no-access-log", "--log-format", "json", "--drain-delay", "0",
        ]  # fmt: skip
        if self.server_class:
            cmd += ["--server", self.server_class]
        if self.reuse_port:
            cmd.append("--reuse-port")
        return cmd


_HTTP = PreforkServer(
    "prefork_handlers:HelloCloseHandler", threads=0, server_class="http.server:HTTPServer"
)
#: Threads per worker of runtime-prefork-http-threads: one per keep-alive connection
#: of wrk's 64, over WORKERS workers.
HTTP_THREADS = 32
_HTTP_THREADS = PreforkServer(
    "runtime.examples.http_hello:HelloHandler",
    threads=HTTP_THREADS,
    server_class="http.server:HTTPServer",
)
_ECHO = PreforkServer("prefork_handlers:UpperHandler", threads=64)
SERVERS = {
    "runtime-prefork-http": _HTTP,
    "runtime-prefork-http-reuseport": replace(_HTTP, reuse_port=True),
    "runtime-prefork-http-threads": _HTTP_THREADS,
    "runtime-prefork": _ECHO,
    "runtime-prefork-reuseport": replace(_ECHO, reuse_port=True),
}


def environment() -> dict[str, str]:
    """This environment without RUNTIME_*/OTEL_*, with this checkout and bench/ importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_", "OTEL_"))}
    path = [str(ROOT), str(BENCH), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def unavailable(names: Sequence[str]) -> dict[str, str]:
    """Of *names*, the pre-fork servers this runtime cannot run, with the reason."""
    wanted = [n for n in names if n in SERVERS and SERVERS[n].reuse_port]
    if not wanted:
        return {}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "--help"],
            capture_output=True, text=True, timeout=60, env=environment(), cwd=ROOT,
        )  # fmt: skip
        helps = done.stdout
    except (OSError, subprocess.SubprocessError):
        helps = ""
    if "--reuse-port" in helps:
        return {}
    return dict.fromkeys(wanted, "this runtime's command line has no --reuse-port")


def die_with_parent() -> None:
    """SIGTERM when the parent (the harness) dies, even by SIGKILL; exit now if it is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # The harness never writes to our stdin: readable means end-of-file, it already left.
    readable, _, _ = select.select([0], [], [], 0)
    if readable and not os.read(0, 1):
        sys.exit("prefork_servers: the harness is gone")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, list(SERVERS), __doc__)
    prepare_process(args.cpu)  # affinity and the fd limit survive exec and fork
    if args.exit_on_stdin_eof:
        die_with_parent()
    cmd = SERVERS[args.name].command()
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    os.execve(cmd[0], cmd, environment())


if __name__ == "__main__":
    sys.exit(main())
