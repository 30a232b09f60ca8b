"""Logs: stdlib records in the runtime's format, fields bound per request, trace correlation."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _proc import RuntimeProcess, connect
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import runtime
from runtime.telemetry.logging import make_logger, route_stdlib_logging


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_stdlib_records_and_bound_fields_through_the_cli(mode: str) -> None:
    rt = RuntimeProcess("handlers:LoggingHandler", "--mode", mode, "--drain-delay", "0")
    clients: dict[str, str] = {}  # client address -> the user its request bound
    try:
        for name in (b"alice", b"bob"):
            sock = connect(rt.address)
            clients[f"127.0.0.1:{sock.getsockname()[1]}"] = name.decode()
            sock.sendall(name + b"\n")
            assert sock.makefile("rb").readline() == b"ok\n"
            sock.close()
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0
    finally:
        rt.close()
    lines = _json_lines(err)
    app = [line for line in lines if line.get("logger") == "app"]
    assert [(line["event"], line["level"], line["user"]) for line in app] == [
        ("hello alice", "warning", "alice"),
        ("hello bob", "warning", "bob"),
    ]
    access = [line for line in lines if line["event"] == "request"]
    # The field bound by one request shows on its own access line and no other (in fork
    # mode the parent writes access lines as it reaps, so their order is not fixed).
    assert {line["client"]: line.get("user") for line in access} == clients
    assert all(line["outcome"] == "ok" for line in access)


def test_bind_outside_a_request_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a request"):
        runtime.bind(user="nobody")


@pytest.fixture
def root_logging() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    route_stdlib_logging(fmt="json", stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


@pytest.mark.timeout(30)
def test_stdlib_lines_inside_a_request_carry_its_trace_id(root_logging: io.StringIO) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = runtime.ThreadingTCPServer(
        ("127.0.0.1", 0), __import__("handlers").LoggingHandler,
        telemetry=runtime.Telemetry(tracer_provider=provider),
        logger=make_logger(fmt="json", stream=io.StringIO()),
    )  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"carol\n")
            assert sock.makefile("rb").readline() == b"ok\n"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "LoggingHandler tcp"]
    (line,) = [line for line in _json_lines(root_logging.getvalue()) if line.get("logger") == "app"]
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")
    assert line["user"] == "carol"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_access_line_counts_bytes_in_and_out(mode: str) -> None:
    rt = RuntimeProcess("echo", "--mode", mode, "--drain-delay", "0")
    try:
        sock = connect(rt.address)
        sock.sendall(b"hello\nworld!\n")  # 13 bytes in, echoed: 13 out
        sock.shutdown(socket.SHUT_WR)
        assert sock.makefile("rb").read() == b"hello\nworld!\n"
        sock.close()
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0
    finally:
        rt.close()
    (access,) = [line for line in _json_lines(err) if line["event"] == "request"]
    assert (access["bytes_in"], access["bytes_out"]) == (13, 13)


@pytest.mark.timeout(30)
def test_access_line_of_a_datagram_has_its_size() -> None:
    log = io.StringIO()
    server = type("Logged", (runtime.UDPServer,), {"access_log": True})(
        ("127.0.0.1", 0), runtime.DatagramRequestHandler,
        logger=make_logger(fmt="json", stream=log),
    )  # fmt: skip
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"twelve bytes", server.server_address)
            server.handle_request()
    finally:
        server.server_close()
    (access,) = [line for line in _json_lines(log.getvalue()) if line["event"] == "request"]
    assert access["bytes_in"] == 12 and "bytes_out" not in access


@pytest.mark.timeout(60)
def test_access_line_bytes_while_the_client_is_still_connected() -> None:
    rt = RuntimeProcess("handlers:HoldHandler", "--drain-delay", "0")
    try:
        sock = connect(rt.address)
        reader = sock.makefile("rb")
        sock.sendall(b"hold\n")  # 5 in
        assert reader.readline() == b"ack\n"  # 4 out
        sock.sendall(b"go\n")  # 3 in
        assert reader.readline() == b"done\n"  # 5 out; the handler ends, no FIN from us yet
        assert reader.readline() == b""
        sock.close()
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0
    finally:
        rt.close()
    (access,) = [line for line in _json_lines(err) if line["event"] == "request"]
    assert (access["bytes_in"], access["bytes_out"]) == (8, 9)


def test_access_lines_written_directly_match_the_logger_s_own() -> None:
    """The access-line fast path renders exactly what the structlog chain would."""
    import io

    from opentelemetry.sdk.trace import TracerProvider

    from runtime.telemetry.logging import access_writer, make_logger

    stream = io.StringIO()
    logger = make_logger(fmt="json", stream=stream).bind(worker=3)
    writer = access_writer(logger)
    assert writer is not None
    assert access_writer(make_logger(fmt="console", stream=io.StringIO())) is None
    fields = {"server": "s", "client": "127.0.0.1:1", "outcome": "ok", "duration_s": 0.5,
              "bytes_in": 1, "user": object()}  # fmt: skip
    span = TracerProvider().get_tracer("t").start_span("x")
    writer(dict(fields), span)
    from opentelemetry import trace

    with trace.use_span(span):
        logger.info("request", **fields)
    fast, slow = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(fast) == list(slow)  # same keys, same order
    fast.pop("timestamp"), slow.pop("timestamp")
    assert fast == slow and fast["worker"] == 3 and len(fast["trace_id"]) == 32


# -- a log reader that stops reading -------------------------------------------------------


def _unread_pipe() -> tuple[int, Any]:
    read_end, write_end = os.pipe()
    return read_end, os.fdopen(write_end, "w")


@pytest.mark.timeout(60)
def test_every_writer_returns_promptly_when_nobody_reads_and_lines_keep_their_order() -> None:
    """structlog lines, direct access lines and stdlib records share one bounded sink."""
    from runtime.telemetry.logging import access_writer, log_sink
    from runtime.telemetry.logsink import LogSink

    read_end, stream = _unread_pipe()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    sink = LogSink(stream, max_pending=16 * 1024)  # a sink may be given as the stream
    logger = make_logger(fmt="json", stream=sink)
    route_stdlib_logging(fmt="json", stream=sink)
    writer = access_writer(logger)
    assert writer is not None
    assert log_sink(logger) is sink and root.handlers[0].stream is sink  # type: ignore[attr-defined]

    def write_all() -> None:
        for n in range(3000):  # ~600 KB: ten pipes' worth
            if n % 3 == 0:
                logger.info("structlog", n=n)
            elif n % 3 == 1:
                writer({"n": n}, None)
            else:
                logging.getLogger("app").warning("stdlib %d", n)

    thread = threading.Thread(target=write_all, daemon=True)
    try:
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "a log write blocked on a pipe nobody reads"
        assert sink.dropped > 0
        lines: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: lines.extend(
            json.loads(line) for line in os.fdopen(read_end, closefd=False)
        ), daemon=True)  # fmt: skip
        reader.start()
        assert sink.drain(30)
    finally:  # EOF for the reader (and an error, not a hang, for a blocked writer)
        sink.close()  # the descriptor of its own
        stream.close()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    reader.join(30)
    os.close(read_end)
    numbered = [line for line in lines if line["event"] != "log lines dropped"]
    assert [line["event"] for line in numbered[:3]] == ["structlog", "request", "stdlib 2"]
    numbers = [line["n"] if "n" in line else int(line["event"].split()[1]) for line in numbered]
    assert numbers == sorted(numbers) and len(numbers) + sink.dropped == 3000
    assert lines[-1] == {"count": sink.dropped, "pid": os.getpid(), "event": "log lines dropped",
                         "level": "warning", "timestamp": lines[-1]["timestamp"]}  # fmt: skip


@pytest.mark.timeout(60)
def test_a_process_exits_promptly_with_lines_nobody_read() -> None:
    import subprocess
    import sys

    from _proc import ROOT, env

    read_end, write_end = os.pipe()
    script = (
        "from runtime.telemetry.logging import make_logger\n"
        "log = make_logger(fmt='json')\n"
        "for n in range(3000): log.info('line', n=n)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env(), stderr=write_end)
    os.close(write_end)
    try:
        # A second or so to write what it can (EXIT_DRAIN_SECONDS), then it leaves.
        assert proc.wait(20) == 0
        with os.fdopen(read_end) as pipe:
            lines = [json.loads(line) for line in pipe]  # what fitted, whole
        assert [line["n"] for line in lines] == list(range(len(lines)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.timeout(60)
def test_the_dropped_lines_report_comes_in_the_logger_s_format() -> None:
    from runtime.telemetry.logsink import LogSink

    read_end, stream = _unread_pipe()
    sink = LogSink(stream, max_pending=1024)
    logger = make_logger(fmt="console", stream=sink)
    try:
        for n in range(2000):  # ~100 KB of console lines: the pipe fills, then the buffer
            logger.info("console line", n=n)
        assert sink.dropped > 0
        with os.fdopen(read_end, closefd=False) as pipe:
            first = pipe.readline()
            assert "console line" in first and not first.startswith("{")
            seen = ""
            while "log lines dropped" not in seen:  # the reader reads: the rest, then the report
                seen = pipe.readline()
        assert "[warning  ] log lines dropped" in seen and f"count={sink.dropped}" in seen
    finally:
        sink.close()
        stream.close()
        os.close(read_end)
