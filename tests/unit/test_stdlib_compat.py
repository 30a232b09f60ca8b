"""``import runtime as socketserver`` is a drop-in replacement for the standard library's."""

from __future__ import annotations

import functools
import http.server
import inspect
import json
import socket
import socketserver
import threading
import urllib.request
import xmlrpc.client
import xmlrpc.server
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from prometheus_client import CollectorRegistry

import runtime

pytestmark = pytest.mark.timeout(60)

Metric = Callable[..., float]
WaitFor = Callable[..., None]

STD_SERVER_NAMES = [
    name
    for name in socketserver.__all__
    if isinstance(getattr(socketserver, name), type)
    and issubclass(getattr(socketserver, name), socketserver.BaseServer)
]
HOOK_COUNT = "socketserver_hook_duration_seconds_count"
REQUESTS = "socketserver_requests_total"


def _quiet_opener() -> urllib.request.OpenerDirector:
    # no proxies from the environment: talk to 127.0.0.1 directly
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _address_for(cls: type, tmp: Path) -> Any:
    if issubclass(cls, socketserver.UnixStreamServer) or issubclass(
        cls, socketserver.UnixDatagramServer
    ):
        return str(tmp / f"{cls.__name__}.sock")
    return ("127.0.0.1", 0)


# -- names, signatures, classes ---------------------------------------------------


def test_every_standard_name_exists_and_subclasses_its_namesake() -> None:
    for name in socketserver.__all__:
        assert hasattr(runtime, name), name
        ours, theirs = getattr(runtime, name), getattr(socketserver, name)
        if isinstance(theirs, type):
            assert isinstance(ours, type) and issubclass(ours, theirs), name


def test_request_handlers_are_the_standard_classes() -> None:
    assert runtime.BaseRequestHandler is socketserver.BaseRequestHandler
    assert runtime.StreamRequestHandler is socketserver.StreamRequestHandler
    assert runtime.DatagramRequestHandler is socketserver.DatagramRequestHandler


@pytest.mark.parametrize("name", STD_SERVER_NAMES)
def test_constructor_accepts_the_standard_arguments(name: str, short_tmp: Path) -> None:
    ours: type = getattr(runtime, name)
    theirs: type = getattr(socketserver, name)
    std_params = [
        p
        for p in inspect.signature(theirs.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]
    our_sig = inspect.signature(ours.__init__)
    our_sig.bind(object(), *[object() for _ in std_params])  # self + positionals
    our_sig.bind(object(), **{p.name: object() for p in std_params})

    # and they really work, by position and by keyword
    address = _address_for(ours, short_tmp)
    if name == "BaseServer":
        by_position = ours(address, runtime.BaseRequestHandler)
        by_keyword = ours(server_address=address, RequestHandlerClass=runtime.BaseRequestHandler)
    else:
        by_position = ours(address, runtime.BaseRequestHandler, False)
        by_keyword = ours(
            server_address=address,
            RequestHandlerClass=runtime.BaseRequestHandler,
            bind_and_activate=False,
        )
    for server in (by_position, by_keyword):
        try:
            assert server.server_address == address
            assert server.RequestHandlerClass is runtime.BaseRequestHandler
        finally:
            server.server_close()


@pytest.mark.parametrize("name", STD_SERVER_NAMES)
def test_constructor_signature_shows_the_standard_parameters(name: str) -> None:
    # help(), IDEs and inspect see the standard parameters, then keyword-only extras
    theirs = inspect.signature(getattr(socketserver, name))
    ours = inspect.signature(getattr(runtime, name))
    assert list(ours.parameters.values())[: len(theirs.parameters)] == list(
        theirs.parameters.values()
    )
    extras = list(ours.parameters.values())[len(theirs.parameters) :]
    assert {p.name for p in extras} >= {"telemetry", "logger", "server_name"}
    assert all(p.kind is p.KEYWORD_ONLY for p in extras)


@pytest.mark.parametrize(
    ("ours", "standard"),
    [
        (runtime.TCPServer, (socketserver.TCPServer, socketserver.BaseServer)),
        (runtime.UDPServer, (socketserver.UDPServer, socketserver.TCPServer)),
        (
            runtime.ThreadingTCPServer,
            (socketserver.ThreadingTCPServer, socketserver.TCPServer, socketserver.ThreadingMixIn),
        ),
        (
            runtime.ThreadingUDPServer,
            (socketserver.ThreadingUDPServer, socketserver.UDPServer, socketserver.ThreadingMixIn),
        ),
        (
            runtime.ForkingTCPServer,
            (socketserver.ForkingTCPServer, socketserver.TCPServer, socketserver.ForkingMixIn),
        ),
        (
            runtime.ForkingUDPServer,
            (socketserver.ForkingUDPServer, socketserver.UDPServer, socketserver.ForkingMixIn),
        ),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_instances_are_instances_of_the_standard_classes(
    ours: type, standard: tuple[type, ...]
) -> None:
    server = ours(("127.0.0.1", 0), runtime.BaseRequestHandler, bind_and_activate=False)
    try:
        for cls in standard:
            assert isinstance(server, cls), cls
        assert isinstance(server, runtime.InstrumentedMixIn)
    finally:
        server.server_close()


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("ThreadingUnixStreamServer", socketserver.UnixStreamServer),
        ("ThreadingUnixDatagramServer", socketserver.UnixDatagramServer),
        ("ForkingUnixStreamServer", socketserver.UnixStreamServer),
        ("ForkingUnixDatagramServer", socketserver.UnixDatagramServer),
    ],
)
def test_unix_server_variants_exist(name: str, base: type, short_tmp: Path) -> None:
    cls = getattr(runtime, name)
    mixin = socketserver.ForkingMixIn if name.startswith("Forking") else socketserver.ThreadingMixIn
    ours = runtime.ForkingMixIn if name.startswith("Forking") else runtime.ThreadingMixIn
    assert issubclass(cls, base) and issubclass(cls, mixin) and issubclass(cls, ours)
    if hasattr(socketserver, name):  # Python 3.12+
        assert issubclass(cls, getattr(socketserver, name))
    server = cls(str(short_tmp / "s.sock"), runtime.BaseRequestHandler)
    try:
        assert server.transport == "unix"
        assert (short_tmp / "s.sock").exists()
    finally:
        server.server_close()


def test_class_variables_keep_their_standard_defaults() -> None:
    names = ("timeout", "allow_reuse_address", "request_queue_size", "address_family",
             "socket_type", "daemon_threads", "block_on_close", "max_children")  # fmt: skip
    for name in STD_SERVER_NAMES:
        ours, theirs = getattr(runtime, name), getattr(socketserver, name)
        for attr in names:
            if hasattr(theirs, attr):
                assert getattr(ours, attr) == getattr(theirs, attr), f"{name}.{attr}"


# -- the standard library documentation's examples, unchanged -------------------------

DOC_TCP_EXAMPLE = '''
import runtime as socketserver

class MyTCPHandler(socketserver.BaseRequestHandler):
    """
    The request handler class for our server.

    It is instantiated once per connection to the server, and must
    override the handle() method to implement communication to the
    client.
    """

    def handle(self):
        # self.request is the TCP socket connected to the client
        self.data = self.request.recv(1024).strip()
        print("{} wrote:".format(self.client_address[0]))
        print(self.data)
        # just send back the same data, but upper-cased
        self.request.sendall(self.data.upper())
'''

DOC_STREAM_EXAMPLE = '''
import runtime as socketserver

class MyTCPHandler(socketserver.StreamRequestHandler):

    def handle(self):
        # self.rfile is a file-like object created by the handler;
        # we can now use e.g. readline() instead of raw recv() calls
        self.data = self.rfile.readline().strip()
        print("{} wrote:".format(self.client_address[0]))
        print(self.data)
        # Likewise, self.wfile is a file-like object used to write back
        # to the client
        self.wfile.write(self.data.upper())
'''

DOC_TCP_CLIENT = '''
import socket

def client(HOST, PORT, data):
    # Create a socket (SOCK_STREAM means a TCP socket)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)  # (added: a test must not hang)
        # Connect to server and send data
        sock.connect((HOST, PORT))
        sock.sendall(bytes(data + "\\n", "utf-8"))

        # Receive data from the server and shut down
        received = str(sock.recv(1024), "utf-8")

    print("Sent:     {}".format(data))
    print("Received: {}".format(received))
'''

DOC_UDP_EXAMPLE = '''
import runtime as socketserver

class MyUDPHandler(socketserver.BaseRequestHandler):
    """
    This class works similar to the TCP handler class, except that
    self.request consists of a pair of data and client socket, and since
    there is no connection the client address must be given explicitly
    when sending data back via sendto().
    """

    def handle(self):
        data = self.request[0].strip()
        socket = self.request[1]
        print("{} wrote:".format(self.client_address[0]))
        print(data)
        socket.sendto(data.upper(), self.client_address)
'''

DOC_UDP_CLIENT = '''
import socket

def client(HOST, PORT, data):
    # SOCK_DGRAM is the socket type to use for UDP sockets
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)  # (added: a test must not hang)

    # As you can see, there is no connect() call; UDP has no connections.
    # Instead, data is directly sent to the recipient via sendto().
    sock.sendto(bytes(data + "\\n", "utf-8"), (HOST, PORT))
    received = str(sock.recv(1024), "utf-8")
    sock.close()

    print("Sent:     {}".format(data))
    print("Received: {}".format(received))
'''

DOC_THREADING_EXAMPLE = '''
import socket
import threading
import runtime as socketserver

class ThreadedTCPRequestHandler(socketserver.BaseRequestHandler):

    def handle(self):
        data = str(self.request.recv(1024), 'ascii')
        cur_thread = threading.current_thread()
        response = bytes("{}: {}".format(cur_thread.name, data), 'ascii')
        self.request.sendall(response)

class ThreadedTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    pass

def client(ip, port, message):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)  # (added: a test must not hang)
        sock.connect((ip, port))
        sock.sendall(bytes(message, 'ascii'))
        response = str(sock.recv(1024), 'ascii')
        print("Received: {}".format(response))

if __name__ == "__main__":
    # Port 0 means to select an arbitrary unused port
    HOST, PORT = "127.0.0.1", 0

    server = ThreadedTCPServer((HOST, PORT), ThreadedTCPRequestHandler)
    with server:
        ip, port = server.server_address

        # Start a thread with the server -- that thread will then start one
        # more thread for each request
        server_thread = threading.Thread(target=server.serve_forever)
        # Exit the server thread when the main thread terminates
        server_thread.daemon = True
        server_thread.start()
        print("Server loop running in thread:", server_thread.name)

        client(ip, port, "Hello World 1")
        client(ip, port, "Hello World 2")
        client(ip, port, "Hello World 3")

        server.shutdown()
'''


def _run(source: str, name: str = "doc_example") -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(source, name, "exec"), namespace)  # the documentation's code
    return namespace


def _serve_doc_example(server_class: type, handler: type, serve: Any) -> Any:
    # the documentation's "with socketserver.TCPServer(...) as server: server.serve_forever()"
    server = server_class(("127.0.0.1", 0), handler)
    return serve(server)


@pytest.mark.parametrize("example", [DOC_TCP_EXAMPLE, DOC_STREAM_EXAMPLE], ids=["recv", "stream"])
def test_documentation_tcp_example(
    example: str, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = _run(example)["MyTCPHandler"]
    server = _serve_doc_example(runtime.TCPServer, handler, serve)
    client = _run(DOC_TCP_CLIENT)["client"]
    client("127.0.0.1", server.server_address[1], "hello world")
    client("127.0.0.1", server.server_address[1], "second line")
    out = capsys.readouterr().out
    assert "Received: HELLO WORLD\n" in out
    assert "Received: SECOND LINE\n" in out
    assert "127.0.0.1 wrote:\nb'hello world'\n" in out


def test_documentation_udp_example(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    handler = _run(DOC_UDP_EXAMPLE)["MyUDPHandler"]
    server = _serve_doc_example(runtime.UDPServer, handler, serve)
    _run(DOC_UDP_CLIENT)["client"]("127.0.0.1", server.server_address[1], "hello datagram")
    out = capsys.readouterr().out
    assert "Received: HELLO DATAGRAM" in out
    assert "127.0.0.1 wrote:\nb'hello datagram'\n" in out


def test_documentation_threading_mixin_example(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = _run(DOC_THREADING_EXAMPLE, name="__main__")
    out = capsys.readouterr().out
    assert "Server loop running in thread:" in out
    for n in (1, 2, 3):
        assert f": Hello World {n}\n" in out
    server = namespace["server"]
    assert isinstance(server, runtime.ThreadingMixIn)  # the bounded pool, not thread-per-request
    assert server.socket.fileno() == -1  # closed by the with block
    namespace["server_thread"].join(10)
    assert not namespace["server_thread"].is_alive()  # shutdown() stopped serve_forever


# -- class variables keep their meaning -------------------------------------------------


def test_timeout_and_handle_timeout_via_handle_request() -> None:
    calls: list[str] = []

    class Handler(runtime.StreamRequestHandler):
        def handle(self) -> None:
            calls.append("handle")
            self.wfile.write(self.rfile.readline())

    class Server(runtime.TCPServer):
        timeout = 0.05

        def handle_timeout(self) -> None:
            calls.append("timeout")

    with Server(("127.0.0.1", 0), Handler) as server:
        server.handle_request()
        assert calls == ["timeout"]
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"ping\n")
            server.handle_request()  # a waiting connection is handled, no timeout
            assert sock.recv(10) == b"ping\n"
        assert calls == ["timeout", "handle"]


@pytest.mark.parametrize("reuse", [True, False])
def test_allow_reuse_address(reuse: bool) -> None:
    class Server(runtime.TCPServer):
        allow_reuse_address = reuse

    with Server(("127.0.0.1", 0), runtime.BaseRequestHandler) as server:
        flag = server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert bool(flag) is reuse


def test_request_queue_size_is_the_listen_backlog() -> None:
    backlog: list[int] = []

    class Server(runtime.ThreadingTCPServer):
        request_queue_size = 77

    server = Server(("127.0.0.1", 0), runtime.BaseRequestHandler, bind_and_activate=False)
    real = server.socket

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def listen(self, n: int) -> None:
            backlog.append(n)
            real.listen(n)

    server.socket = Recorder()  # type: ignore[assignment]
    try:
        server.server_bind()
        server.server_activate()
        assert backlog == [77]
    finally:
        server.socket = real
        server.server_close()


@pytest.mark.parametrize("daemon", [True, False])
def test_daemon_threads(daemon: bool, serve: Any) -> None:
    seen: list[bool] = []

    class Handler(runtime.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(threading.current_thread().daemon)
            self.request.sendall(b"ok")

    class Server(runtime.ThreadingTCPServer):
        daemon_threads = daemon

    server = serve(Server(("127.0.0.1", 0), Handler))
    with socket.create_connection(server.server_address, timeout=10) as sock:
        assert sock.recv(10) == b"ok"
    assert seen == [daemon]


@pytest.mark.parametrize("block", [True, False])
def test_block_on_close(block: bool) -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    class Handler(runtime.BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            release.wait(20)
            finished.set()

    class Server(runtime.ThreadingTCPServer):
        block_on_close = block

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    closed = threading.Event()
    finished_before_close: list[bool] = []

    def close() -> None:
        server.server_close()
        finished_before_close.append(finished.is_set())
        closed.set()

    try:
        with socket.create_connection(server.server_address, timeout=10):
            assert started.wait(10)
            server.shutdown()
            thread.join(10)
            closer = threading.Thread(target=close, daemon=True)
            closer.start()
            if block:
                # server_close() must still be waiting for the handler
                assert not closed.wait(0.3)
                release.set()
            assert closed.wait(10)
            assert finished_before_close == [block]
    finally:
        release.set()


def test_max_children_is_the_thread_ceiling(serve: Any, wait_for: WaitFor) -> None:
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    class Handler(runtime.BaseRequestHandler):
        def handle(self) -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            release.wait(20)
            with lock:
                running[0] -= 1
            self.request.sendall(b"ok")

    class Server(runtime.ThreadingTCPServer):
        max_children = 3

    server = serve(Server(("127.0.0.1", 0), Handler))
    socks = [socket.create_connection(server.server_address, timeout=10) for _ in range(6)]
    try:
        wait_for(lambda: running[0] == 3, what="3 handlers running")
        # the other three wait their turn in the queue
        wait_for(lambda: server.runtime_stats()["queue_depth"] == 3, what="3 queued")
        release.set()
        assert [s.recv(10) for s in socks] == [b"ok"] * 6
        assert peak[0] == 3
    finally:
        release.set()
        for s in socks:
            s.close()


def test_handler_instances_are_of_the_request_handler_class(serve: Any) -> None:
    class Counting(runtime.BaseRequestHandler):
        served = 0

        def handle(self) -> None:
            type(self).served += 1  # class-level state, as some handlers keep it
            self.request.sendall(b"%d" % type(self).served)

    server = serve(runtime.TCPServer(("127.0.0.1", 0), Counting))
    for expected in (b"1", b"2"):
        with socket.create_connection(server.server_address, timeout=10) as sock:
            assert sock.recv(10) == expected
    assert Counting.served == 2


def test_context_manager_closes_the_server() -> None:
    with runtime.ThreadingTCPServer(("127.0.0.1", 0), runtime.BaseRequestHandler) as server:
        address = server.server_address
        assert server.socket.fileno() != -1
    assert server.socket.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_shutdown_from_inside_a_handler_does_not_deadlock(server_class: type) -> None:
    class Quitter(runtime.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"bye")
            self.server.shutdown()  # the standard library deadlocks here in a sync server
            self.request.sendall(b"!")

    server = server_class(("127.0.0.1", 0), Quitter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(10)
                if not chunk:
                    break
                reply += chunk
            assert reply == b"bye!"
        thread.join(10)
        assert not thread.is_alive(), "serve_forever did not stop: shutdown() deadlocked"
    finally:
        if not thread.is_alive():
            server.server_close()


# -- instrument(): servers built on socketserver ----------------------------------------


class HelloHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass


def _get(url: str) -> bytes:
    with _quiet_opener().open(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _assert_hooks_seen(metric: Metric, count: int, hooks: Iterable[str] = ()) -> None:
    for hook in ("get_request", "verify_request", "process_request", "finish_request",
                 "setup", "handle", "finish", "shutdown_request", *hooks):  # fmt: skip
        assert metric(HOOK_COUNT, hook=hook) == count, hook


def test_instrument_http_server(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    server_class = runtime.instrument(http.server.HTTPServer)
    assert issubclass(server_class, http.server.HTTPServer)
    assert runtime.instrument(http.server.HTTPServer) is server_class  # cached
    server = serve(server_class(("127.0.0.1", 0), HelloHandler, telemetry=telemetry))
    port = server.server_address[1]
    assert json.loads(_get(f"http://127.0.0.1:{port}/a")) == {"path": "/a"}
    assert json.loads(_get(f"http://127.0.0.1:{port}/b")) == {"path": "/b"}
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 2, what="2 HTTP requests")
    _assert_hooks_seen(metric, 2)
    assert metric(REQUESTS, transport="tcp") == 2


def test_instrumented_http_server_keeps_its_metric_server_name(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    server_class = runtime.instrument(http.server.HTTPServer)
    named = serve(server_class(("127.0.0.1", 0), HelloHandler, telemetry=telemetry,
                               server_name="api"))  # fmt: skip
    default = serve(server_class(("127.0.0.1", 0), HelloHandler, telemetry=telemetry))
    _get(f"http://127.0.0.1:{named.server_address[1]}/")
    _get(f"http://127.0.0.1:{default.server_address[1]}/")
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 2, what="2 HTTP requests")
    # http.server.HTTPServer uses server_name for the host name: the label must not follow it
    assert metric(REQUESTS, server="api", outcome="ok") == 1
    assert metric(REQUESTS, server="HTTPServer", outcome="ok") == 1
    assert named.server_name == default.server_name != "api"  # still HTTPServer's host name


def test_instrument_threading_http_server_gets_the_bounded_pool(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    server_class = runtime.instrument(http.server.ThreadingHTTPServer)
    assert issubclass(server_class, runtime.ThreadingMixIn)
    assert issubclass(server_class, http.server.ThreadingHTTPServer)
    server = serve(server_class(("127.0.0.1", 0), HelloHandler, telemetry=telemetry))
    port = server.server_address[1]
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(_get(f"http://127.0.0.1:{port}/{i}")))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(json.loads(r)["path"] for r in results) == [f"/{i}" for i in range(8)]
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 8, what="8 HTTP requests")
    assert metric("socketserver_queue_wait_seconds_count") == 8
    assert metric("socketserver_workers_max") == runtime.ThreadingMixIn.max_children


def test_instrument_rejects_what_is_not_a_server() -> None:
    with pytest.raises(TypeError):
        runtime.instrument(dict)
    with pytest.raises(ValueError, match="mode"):
        runtime.instrument(http.server.HTTPServer, mode="greenlet")
    assert runtime.instrument(runtime.TCPServer) is runtime.TCPServer


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass


def _serve_directory(telemetry: runtime.Telemetry, serve: Any, directory: Path) -> Any:
    # how http.server's own command line builds its handler
    handler = functools.partial(QuietFiles, directory=str(directory))
    server_class = runtime.instrument(http.server.HTTPServer)
    return serve(server_class(("127.0.0.1", 0), handler, telemetry=telemetry))


def test_instrumented_http_server_with_a_partial_handler_serves(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor, tmp_path: Path
) -> None:
    (tmp_path / "hello.txt").write_text("hello from disk")
    server = _serve_directory(telemetry, serve, tmp_path)
    assert _get(f"http://127.0.0.1:{server.server_address[1]}/hello.txt") == b"hello from disk"
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 1, what="1 request")
    assert metric(HOOK_COUNT, hook="finish_request") == 1


def test_partial_handler_hooks_are_measured(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor, tmp_path: Path
) -> None:
    (tmp_path / "hello.txt").write_text("hello from disk")
    server = _serve_directory(telemetry, serve, tmp_path)
    _get(f"http://127.0.0.1:{server.server_address[1]}/hello.txt")
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 1, what="1 request")
    for hook in ("setup", "handle", "finish"):
        assert metric(HOOK_COUNT, hook=hook) == 1, hook


class QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass


def test_instrument_wsgiref_server(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"hello {environ['PATH_INFO']}".encode()]

    server_class = runtime.instrument(WSGIServer)
    server = make_server("127.0.0.1", 0, app, server_class=server_class,
                         handler_class=QuietWSGIHandler)  # fmt: skip
    assert isinstance(server, WSGIServer)
    server.use_telemetry(telemetry)  # type: ignore[attr-defined]
    serve(server)
    assert _get(f"http://127.0.0.1:{server.server_port}/wsgi") == b"hello /wsgi"
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 1, what="1 WSGI request")
    _assert_hooks_seen(metric, 1)


def test_instrument_xmlrpc_server(
    telemetry: runtime.Telemetry,
    registry: CollectorRegistry,
    serve: Any,
    metric: Metric,
    wait_for: WaitFor,
) -> None:
    server_class = runtime.instrument(xmlrpc.server.SimpleXMLRPCServer)
    server = server_class(("127.0.0.1", 0), logRequests=False, telemetry=telemetry)
    assert isinstance(server, xmlrpc.server.SimpleXMLRPCServer)
    server.register_function(pow)
    server.register_function(lambda: 1 / 0, "explode")
    serve(server)
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.server_address[1]}/")
    with proxy:
        assert proxy.pow(2, 10) == 1024
        assert proxy.pow(3, 3) == 27
        with pytest.raises(xmlrpc.client.Fault):
            proxy.explode()  # a fault is an HTTP 200 answer: the request itself is ok
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 3, what="3 XML-RPC calls")
    _assert_hooks_seen(metric, 3)
    assert metric("socketserver_errors_total") == 0
