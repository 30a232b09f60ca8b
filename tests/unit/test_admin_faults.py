"""The admin port under hostile or broken peers (issue 10, point 4).

Whatever idle, churning, half-sent, never-reading peers or a hung collector
hold, the probes are answered: each test holds its fault, then asks for a
run of probes in a row, each with a generous 2 s limit (a busy machine must
not flake; latency numbers belong to the benchmark, not here).  Then the
contract around it: nosniff and one JSON line on every response, odd
``Accept`` headers, request size limits, the connection cap's eviction, and
a forked child releasing every descriptor of the port.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

import runtime
from runtime.admin import AdminServer
from runtime.lifecycle import Lifecycle, State
from runtime.status import StatusBoard
from runtime.telemetry.logging import make_logger

PROBE_TIMEOUT = 2.0  # per probe: generous, so a loaded machine does not flake
PROBES = 10
Render = Callable[[str], tuple[bytes, str]]
WaitFor = Callable[..., None]


def _small_metrics(_accept: str) -> tuple[bytes, str]:
    return b"# TYPE up gauge\nup 1\n", "text/plain; version=0.0.4; charset=utf-8"


class Admin:
    """An admin port on 127.0.0.1:0 with its lifecycle and a captured log."""

    def __init__(self, render: Render = _small_metrics, **options: Any) -> None:
        self.lifecycle = Lifecycle()
        self.lifecycle.to(State.SERVING)
        self.server = AdminServer(
            ("127.0.0.1", 0), lifecycle=self.lifecycle, render_metrics=render, **options
        )
        self.server.start()
        self.address = self.server.address


@pytest.fixture
def make_admin() -> Iterator[Callable[..., Admin]]:
    made: list[Admin] = []

    def make(render: Render = _small_metrics, **options: Any) -> Admin:
        made.append(Admin(render, **options))
        return made[-1]

    yield make
    for admin in made:
        admin.server.close()


@pytest.fixture
def peers() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all closed at teardown."""
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def get(
    address: tuple[str, int], path: str, headers: dict[str, str] | None = None,
    method: str = "GET", timeout: float = PROBE_TIMEOUT,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def exchange(address: tuple[str, int], raw: bytes, timeout: float = PROBE_TIMEOUT) -> bytes:
    """Send *raw* as it is, read the reply to EOF."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_probes_answered(address: tuple[str, int], n: int = PROBES) -> None:
    """*n* probes in a row (/livez, /readyz, /metrics in turn) each answered 200 in time."""
    for i in range(n):
        path = ("/livez", "/readyz", "/metrics")[i % 3]
        try:
            status = get(address, path)[0]
        except OSError as exc:
            pytest.fail(f"probe {i + 1}/{n} {path}: {type(exc).__name__}: {exc}")
        assert status == 200, f"probe {i + 1}/{n} {path}: {status}"


def connect(address: tuple[str, int], held: list[socket.socket], n: int, send: bytes = b"") -> None:
    for _ in range(n):
        sock = socket.create_connection(address, timeout=PROBE_TIMEOUT)
        held.append(sock)
        if send:
            sock.sendall(send)


# -- probes hold whatever peers hold --------------------------------------------------------


def test_probes_are_answered_while_200_idle_connections_are_held(
    make_admin: Callable[..., Admin], peers: list[socket.socket]
) -> None:
    admin = make_admin()
    connect(admin.address, peers, 200)
    assert_probes_answered(admin.address)


def test_probes_are_answered_while_peers_hold_half_sent_request_heads(
    make_admin: Callable[..., Admin], peers: list[socket.socket]
) -> None:
    admin = make_admin()
    connect(admin.address, peers, 100, b"GET /liv")  # half a request line
    connect(admin.address, peers, 100, b"GET /livez HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    assert_probes_answered(admin.address)


def test_probes_are_answered_while_100_connections_are_reopened_as_fast_as_they_close(
    make_admin: Callable[..., Admin], wait_for: WaitFor
) -> None:
    admin = make_admin()
    stop = threading.Event()
    opened = [0]

    def churn() -> None:
        held: list[socket.socket] = []
        try:
            while not stop.is_set() and opened[0] < 50_000:  # bounded traffic
                with contextlib.suppress(OSError):
                    held.append(socket.create_connection(admin.address, timeout=1))
                    opened[0] += 1
                if len(held) > 100:
                    held.pop(0).close()
        finally:
            for sock in held:
                sock.close()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        wait_for(lambda: opened[0] >= 200, what="the churn to be under way")
        assert_probes_answered(admin.address)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_probes_are_answered_while_peers_never_read_their_responses(
    make_admin: Callable[..., Admin], peers: list[socket.socket]
) -> None:
    # 8 MB: more than loopback's kernel buffers take (about 3 MB), so writing it blocks.
    big = b"# a large scrape\n" * (8 * 1024 * 1024 // 17)

    def render(accept: str) -> tuple[bytes, str]:
        return big, "text/plain; version=0.0.4; charset=utf-8"

    admin = make_admin(render)
    for _ in range(12):  # more than the old port's 4 threads, its queue then holds the probes
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peers.append(sock)
        sock.settimeout(PROBE_TIMEOUT)
        sock.connect(admin.address)
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # and never read
    for path in ("/livez", "/readyz") * 5:
        assert get(admin.address, path)[0] == 200


def test_probes_are_answered_while_scrapes_hang_and_the_hung_scrapes_get_503(
    make_admin: Callable[..., Admin],
) -> None:
    release = threading.Event()

    def hung(accept: str) -> tuple[bytes, str]:
        release.wait(30)  # a collector that does not answer
        return _small_metrics(accept)

    admin = make_admin(hung, request_timeout=1.0)
    replies: list[int | str] = []

    def scrape() -> None:
        try:
            replies.append(get(admin.address, "/metrics", timeout=10)[0])
        except OSError as exc:
            replies.append(type(exc).__name__)

    scrapers = [threading.Thread(target=scrape, daemon=True) for _ in range(6)]
    try:
        for thread in scrapers:
            thread.start()
        for path in ("/livez", "/readyz") * 5:
            assert get(admin.address, path)[0] == 200
        for thread in scrapers:
            thread.join(10)
        # Each got an answer within its time-out, not a connection held forever.
        assert replies == [503] * 6
    finally:
        release.set()


# -- the connection cap --------------------------------------------------------------------


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_a_new_connection_at_the_cap_evicts_the_oldest_idle_one(
    make_admin: Callable[..., Admin], peers: list[socket.socket], wait_for: WaitFor
) -> None:
    admin = make_admin(max_connections=8, request_timeout=60)  # no deadline meanwhile
    connect(admin.address, peers, 8)
    for n in range(2):  # one more each time: the oldest goes, the rest stay
        connect(admin.address, peers, 1)
        oldest = peers[n]
        wait_for(lambda: _closed_by_server(oldest), what=f"peer {n} to be evicted")  # noqa: B023
        assert not any(_closed_by_server(p) for p in peers[n + 1 :])
    assert get(admin.address, "/livez")[0] == 200  # at the cap: answered, not refused
    wait_for(lambda: _closed_by_server(peers[2]), what="peer 2 to be evicted")
    assert not any(_closed_by_server(p) for p in peers[3:])


def test_probes_are_answered_with_three_times_the_cap_held(
    make_admin: Callable[..., Admin], peers: list[socket.socket]
) -> None:
    admin = make_admin(max_connections=32)
    connect(admin.address, peers, 48)
    connect(admin.address, peers, 48, b"GET / HTTP/1.1\r\n")
    assert_probes_answered(admin.address)


# -- every response: nosniff, and errors as one JSON line -------------------------------------


class _Echo(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.fixture
def full_admin() -> Iterator[AdminServer]:
    """An admin port with a status page, as the CLI builds it."""
    telemetry = runtime.Telemetry()
    server = runtime.ThreadingTCPServer(("127.0.0.1", 0), _Echo, telemetry=telemetry)
    lifecycle = Lifecycle()
    board = StatusBoard(lifecycle, [server], telemetry)
    admin = AdminServer(
        ("127.0.0.1", 0), lifecycle=lifecycle, render_metrics=telemetry.render, status=board
    )
    admin.start()
    yield admin
    admin.close()
    server.server_close()


_KINDS: list[tuple[str, bytes, int]] = [
    ("probe", b"GET /livez HTTP/1.0\r\n\r\n", 200),
    ("not ready", b"GET /readyz HTTP/1.0\r\n\r\n", 503),
    ("metrics", b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ("status page", b"GET / HTTP/1.0\r\n\r\n", 200),
    ("static", b"GET /static/status.js HTTP/1.0\r\n\r\n", 200),
    ("status.json", b"GET /status.json HTTP/1.0\r\n\r\n", 200),
    ("HEAD", b"HEAD /livez HTTP/1.0\r\n\r\n", 200),
    ("404", b"GET /nope HTTP/1.0\r\n\r\n", 404),
    ("405", b"DELETE /livez HTTP/1.0\r\n\r\n", 405),
    ("bad request line", b"\x16\x03\x01 hello\r\n\r\n", 400),
    ("bad header", b"GET /livez HTTP/1.0\r\nno colon here\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("414", b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n", 414),
    ("431", b"GET / HTTP/1.0\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
]


@pytest.mark.parametrize(("raw", "status"), [k[1:] for k in _KINDS], ids=[k[0] for k in _KINDS])
def test_every_response_says_nosniff(full_admin: AdminServer, raw: bytes, status: int) -> None:
    got, headers, body = split(exchange(full_admin.address, raw))
    assert got == status
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close"
    if status >= 400 and status != 503:
        assert headers["content-type"] == "application/json"
        assert body.count(b"\n") == 1 and "error" in json.loads(body)


def test_a_collector_that_raises_gives_500_one_log_line_and_the_loop_lives_on(
    make_admin: Callable[..., Admin], wait_for: WaitFor
) -> None:
    def broken(accept: str) -> tuple[bytes, str]:
        raise RuntimeError("a collector failed\non two lines")

    stream = io.StringIO()
    admin = make_admin(broken, logger=make_logger(fmt="json", stream=stream))
    for _ in range(3):
        status, headers, body = get(admin.address, "/metrics")
        assert status == 500
        assert headers["x-content-type-options"] == "nosniff"
        assert json.loads(body) == {"error": "RuntimeError: a collector failed\non two lines"}
        assert b"Traceback" not in body and body.count(b"\n") == 1
        assert get(admin.address, "/livez")[0] == 200
    wait_for(lambda: stream.getvalue().count("\n") >= 3, what="three log lines")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["level"] == "error" and line["path"] == "/metrics"
        assert line["exception"][0]["exc_type"] == "RuntimeError"  # with its traceback


# -- content negotiation: odd Accept headers never cost the scrape ----------------------------

PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
    "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
_ACCEPTS = {  # id: (Accept, the format expected)
    "openmetrics 0.0.1": ("application/openmetrics-text; version=0.0.1", "text"),
    "version=abc": ("application/openmetrics-text; version=abc", "text"),
    "version=1.x": ("application/openmetrics-text; version=1.x", "text"),
    "text version=junk": ("text/plain; version=junk", "text"),
    "control characters": ("text/plain; version=1.0.0\x0bX-Injected: 1", "text"),
    "q=zero": ("application/openmetrics-text; version=1.0.0; q=zero", "text"),
    "q=0": ("application/openmetrics-text; version=1.0.0; q=0", "text"),
    "garbage": ("garbage;;;==,,;q=,=", "text"),
    "*/*": ("*/*", "text"),
    "none": ("", "text"),
    "openmetrics, no version": ("application/openmetrics-text", "openmetrics"),
    "Prometheus 2": (PROMETHEUS_2, "openmetrics"),
    "Prometheus 3": (PROMETHEUS_3, "openmetrics"),
    "q order": (
        "text/plain;version=1.0.0;q=0.2, application/openmetrics-text;version=1.0.0;q=0.9",
        "openmetrics",
    ),
}


@pytest.mark.parametrize(("accept", "kind"), _ACCEPTS.values(), ids=_ACCEPTS.keys())
def test_odd_accept_headers_get_a_format_that_parses(
    make_admin: Callable[..., Admin], accept: str, kind: str
) -> None:
    telemetry = runtime.Telemetry()
    server = runtime.ThreadingTCPServer(("127.0.0.1", 0), _Echo, telemetry=telemetry)
    try:
        admin = make_admin(telemetry.render)
        raw = f"GET /metrics HTTP/1.0\r\nAccept: {accept}\r\n\r\n".encode("latin-1")
        status, headers, body = split(exchange(admin.address, raw))
    finally:
        server.server_close()
    assert status == 200, body[:200]
    content_type = headers["content-type"]
    assert not any(ord(c) < 32 for c in content_type)
    if kind == "openmetrics":
        assert content_type.startswith("application/openmetrics-text; version=1.0.0")
        families = list(parse_om(body.decode()))  # type: ignore[no-untyped-call]
    else:
        assert content_type.startswith("text/plain; version=")
        families = list(parse_text(body.decode()))
    assert any(f.name == "socketserver_requests" for f in families)


# -- request size limits and deadlines -------------------------------------------------------


def test_request_size_limits(make_admin: Callable[..., Admin]) -> None:
    admin = make_admin()
    # Up to the limits: served.
    line = b"GET /livez?" + b"a" * (8 * 1024 - 30) + b" HTTP/1.0\r\n"
    assert split(exchange(admin.address, line + b"\r\n"))[0] == 200
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 600) for i in range(100))  # 60 KB, 100 lines
    assert split(exchange(admin.address, b"GET /livez HTTP/1.0\r\n" + headers + b"\r\n"))[0] == 200
    # Past them: 414, 431 (size), 431 (count).
    line = b"GET /livez?" + b"a" * (8 * 1024) + b" HTTP/1.0\r\n\r\n"
    assert split(exchange(admin.address, line))[0] == 414
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(66))  # 66 KB
    assert split(exchange(admin.address, b"GET /livez HTTP/1.0\r\n" + headers + b"\r\n"))[0] == 431
    headers = b"X-A: b\r\n" * 101
    assert split(exchange(admin.address, b"GET /livez HTTP/1.0\r\n" + headers + b"\r\n"))[0] == 431


def test_a_head_that_never_ends_is_refused_before_it_is_all_sent(
    make_admin: Callable[..., Admin],
) -> None:
    admin = make_admin()
    with socket.create_connection(admin.address, timeout=PROBE_TIMEOUT) as sock:
        sock.sendall(b"GET /livez HTTP/1.0\r\n")
        reply = b""
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # up to 4 MB of header lines, with no end
                sock.sendall(b"X-Long: " + b"v" * 65_000 + b"\r\n")
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                reply += chunk
    assert split(reply)[0] == 431


def test_a_peer_that_does_not_finish_its_head_in_time_is_cut(
    make_admin: Callable[..., Admin],
) -> None:
    admin = make_admin(request_timeout=0.5)
    with socket.create_connection(admin.address, timeout=10) as silent, \
            socket.create_connection(admin.address, timeout=10) as slow:  # fmt: skip
        slow.sendall(b"GET /livez HTTP/1.1\r\n")
        started = time.monotonic()
        assert silent.recv(1024) == b""  # closed, nothing said: it asked nothing
        status, headers, _ = split(slow.recv(4096))
        assert status == 408 and headers["x-content-type-options"] == "nosniff"
        assert slow.recv(1024) == b""
        assert time.monotonic() - started < 8  # cut near 0.5 s; bound generous for busy CI


def test_peers_that_hang_up_early_are_not_logged(
    make_admin: Callable[..., Admin],
) -> None:
    big = b"x" * (8 * 1024 * 1024)
    stream = io.StringIO()
    admin = make_admin(
        lambda _a: (big, "text/plain"), logger=make_logger(fmt="json", stream=stream)
    )
    abort = struct.pack("ii", 1, 0)
    for request in (
        b"",
        b"GET /liv",
        b"GET /metrics HTTP/1.0\r\n\r\n",
        b"GET /livez HTTP/1.0\r\n\r\n",
    ):
        sock = socket.create_connection(admin.address, timeout=PROBE_TIMEOUT)
        sock.sendall(request)
        if request.startswith(b"GET /metrics"):
            sock.recv(1024)  # the response has begun: reset in the middle of it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, abort)
        sock.close()  # a reset
    assert_probes_answered(admin.address)
    assert stream.getvalue() == ""


# -- fork ------------------------------------------------------------------------------------


def _open_fds() -> dict[int, str]:
    """This process's open descriptors and what each is (the listing's own is left out)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's descriptor is closed by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_forked_child_releases_every_descriptor_of_the_port(
    make_admin: Callable[..., Admin], peers: list[socket.socket]
) -> None:
    before = set(_open_fds())
    admin = make_admin()
    connect(admin.address, peers, 3)
    assert get(admin.address, "/livez")[0] == 200  # the 3 peers are accepted by now
    mine = {p.fileno() for p in peers}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a pre-fork worker does with Prefork.close_in_workers
        code = 1
        try:
            admin.server.descriptors.close()
            fds = _open_fds()
            left = {fd: fds[fd] for fd in set(fds) - before - mine - {read_end, write_end}}
            os.write(write_end, json.dumps(left).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        left = json.loads(pipe.read() or "null")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert left == {}, "the child kept these"
    assert_probes_answered(admin.address)  # the parent's port is untouched


# -- out of file descriptors -----------------------------------------------------------------

_LOW_FDS_SERVER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
from runtime.admin import AdminServer
from runtime.lifecycle import Lifecycle, State
lifecycle = Lifecycle()
lifecycle.to(State.SERVING)
admin = AdminServer(("127.0.0.1", 0), lifecycle=lifecycle,
                    render_metrics=lambda a: (b"up 1\\n", "text/plain"))
admin.start()
print(admin.address[1], flush=True)
sys.stdin.read()
admin.close()
"""


def test_out_of_file_descriptors_the_port_still_answers_probes(
    peers: list[socket.socket],
) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _LOW_FDS_SERVER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        address = ("127.0.0.1", int(proc.stdout.readline()))
        connect(address, peers, 80)  # more than its 48 descriptors
        assert_probes_answered(address)
    finally:
        proc.communicate("", timeout=10)
    assert proc.returncode == 0
