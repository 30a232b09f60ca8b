"""LogSink: a write never waits for the reader; what it cannot write is dropped and counted."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _proc import poll

from runtime.telemetry.logsink import LogSink

#: Generous: a blocked write never returns; a busy machine is slow, not stuck.
WRITE_BOUND = 30.0
WAIT = 20.0


def _lines(count: int, long_every: int = 0) -> list[str]:
    """Numbered JSON lines of ~100 bytes; every *long_every*-th one 10 KB (> PIPE_BUF)."""
    out = []
    for n in range(count):
        pad = "y" * 10_000 if long_every and n % long_every == 0 else "x" * 80
        out.append(json.dumps({"n": n, "pad": pad}) + "\n")
    return out


def _write_bounded(sink: LogSink, lines: list[str]) -> None:
    """Write *lines* from a thread; fail (instead of hanging) if the writes block."""
    writer = threading.Thread(target=lambda: [sink.write(line) for line in lines], daemon=True)
    writer.start()
    writer.join(WRITE_BOUND)
    assert not writer.is_alive(), "sink.write blocked on a stream nobody reads"


class _Reader:
    """Reads a descriptor on a thread, once started: the log reader coming back."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read = read
        self._data = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Reader:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while chunk := self._read():
                self._data += chunk
        except OSError:  # closed at teardown (a terminal says EIO)
            pass

    def parsed(self) -> list[dict[str, Any]]:
        """The complete lines so far, each parsed: a torn line fails here."""
        text = bytes(self._data).decode()
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        poll(lambda: predicate(self.parsed()), WAIT, "the lines to arrive")
        return self.parsed()


def _has_report(lines: list[dict[str, Any]]) -> bool:
    return any(line.get("event") == "log lines dropped" for line in lines)


def _all_in(sink: LogSink, written: int) -> Callable[[list[dict[str, Any]]], bool]:
    """True once every line written is in, or dropped and reported."""

    def check(lines: list[dict[str, Any]]) -> bool:
        numbered = sum(1 for line in lines if "n" in line)
        counts = [line["count"] for line in lines if line.get("event") == "log lines dropped"]
        return numbered + sink.dropped == written and sum(counts) == sink.dropped

    return check


def _check_drained(
    lines: list[dict[str, Any]], sink: LogSink, written: int, *, one_report: bool = True
) -> None:
    """Whole lines, in order, each written or counted, and every drop reported.

    With a non-blocking stream, lines are dropped only while the stream takes
    nothing, so one report comes, last, once it takes them all.  (The writer
    thread's buffer can also overflow while it writes: a report each time.)
    """
    numbers = [line["n"] for line in lines if "n" in line]
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert len(numbers) + sink.dropped == written
    reports = [line for line in lines if line.get("event") == "log lines dropped"]
    assert sum(report["count"] for report in reports) == sink.dropped
    assert {(report["level"], report["pid"]) for report in reports} == {("warning", os.getpid())}
    if one_report:
        assert reports == [lines[-1]]


@pytest.fixture
def pipe() -> Iterator[tuple[int, io.TextIOWrapper]]:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    yield read_end, stream
    stream.close()
    os.close(read_end)


@pytest.fixture
def make_sink() -> Iterator[Callable[..., LogSink]]:
    """LogSink(...), closed at teardown (before the pipe: its reader then sees the end)."""
    made: list[LogSink] = []

    def make(stream: Any, **kwargs: Any) -> LogSink:
        made.append(LogSink(stream, **kwargs))
        return made[-1]

    yield make
    for sink in made:
        sink.close()


def test_a_pipe_nobody_reads_costs_dropped_lines_not_a_blocked_writer(
    pipe: tuple[int, io.TextIOWrapper], make_sink: Callable[..., LogSink]
) -> None:
    read_end, stream = pipe
    drops: list[int] = []
    sink = make_sink(stream, max_pending=16 * 1024, on_drop=drops.append)
    lines = _lines(2000, long_every=97)  # ~400 KB against 64 KiB of pipe and 16 KiB of buffer
    _write_bounded(sink, lines)
    assert sink.dropped > 0 and sum(drops) == sink.dropped
    assert sink.pending <= 16 * 1024  # bounded memory
    assert not sink.drain(0.05)  # nothing moves while nobody reads
    reader = _Reader(lambda: os.read(read_end, 65536)).start()
    _check_drained(reader.wait_for(_all_in(sink, len(lines))), sink, len(lines))
    assert sink.drain(WAIT) and sink.pending == 0


def test_a_socket_stream_nobody_reads_likewise(make_sink: Callable[..., LogSink]) -> None:
    # journald's stdout is a Unix stream socket: sent without waiting, partly if need be.
    ours, theirs = socket.socketpair()
    with ours, theirs, ours.makefile("w") as stream:
        sink = make_sink(stream, max_pending=16 * 1024)
        lines = _lines(6000, long_every=97)  # well past the socket's send buffer
        _write_bounded(sink, lines)
        assert sink.dropped > 0
        reader = _Reader(lambda: theirs.recv(65536)).start()
        _check_drained(reader.wait_for(_all_in(sink, len(lines))), sink, len(lines))
        sink.close()  # (the sink's copy of the socket: the reader sees the end)


def test_a_terminal_nobody_reads_likewise() -> None:
    # A terminal stops taking output while its reader does not read (or after Ctrl-S).
    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as stream:
        sink = LogSink(stream, max_pending=16 * 1024)
        lines = _lines(2000, long_every=97)
        _write_bounded(sink, lines)
        assert sink.dropped > 0
        reader = _Reader(lambda: os.read(controller, 65536)).start()
        _check_drained(reader.wait_for(_all_in(sink, len(lines))), sink, len(lines))
        sink.close()
    os.close(controller)


def test_where_proc_cannot_reopen_the_pipe_a_writer_thread_takes_the_blocking_writes(
    pipe: tuple[int, io.TextIOWrapper],
    make_sink: Callable[..., LogSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = os.open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith("/proc/self/fd/"):  # no /proc, or a pipe not ours to open
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_proc)
    read_end, stream = pipe
    sink = make_sink(stream, max_pending=16 * 1024)
    lines = _lines(2000, long_every=97)
    _write_bounded(sink, lines)
    assert sink.dropped > 0
    reader = _Reader(lambda: os.read(read_end, 65536)).start()
    got = reader.wait_for(_all_in(sink, len(lines)))
    _check_drained(got, sink, len(lines), one_report=False)


def test_a_regular_file_gets_every_line(tmp_path: Path) -> None:
    lines = _lines(3000, long_every=97)
    with open(tmp_path / "log", "a") as stream:
        sink = LogSink(stream, max_pending=1024)
        _write_bounded(sink, lines)
    assert sink.dropped == 0
    assert (tmp_path / "log").read_text() == "".join(lines)


def test_a_stream_without_a_descriptor_gets_every_line() -> None:
    stream = io.StringIO()
    sink = LogSink(stream, max_pending=1024)
    lines = _lines(500, long_every=97)
    _write_bounded(sink, lines)
    assert (sink.dropped, stream.getvalue()) == (0, "".join(lines))


def test_stderr_is_whatever_sys_stderr_is_when_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = LogSink()
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    sink.write("one\n")
    monkeypatch.setattr("sys.stderr", second)
    sink.write("two\n")
    assert (first.getvalue(), second.getvalue()) == ("one\n", "two\n")


def _in_child(body: Callable[[], bool]) -> int:
    """Run *body* in a forked child; its exit status (0: it returned True)."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = body()
        finally:
            os._exit(0 if ok else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_forked_child_writes_its_own_lines_not_the_parent_s_pending_ones(
    pipe: tuple[int, io.TextIOWrapper], make_sink: Callable[..., LogSink]
) -> None:
    read_end, stream = pipe
    sink = make_sink(stream, max_pending=16 * 1024)
    lines = _lines(1500)
    _write_bounded(sink, lines)  # the pipe is full, 16 KiB pending, some dropped
    assert sink.pending > 0 and sink.dropped > 0
    parent_dropped = sink.dropped
    reader = _Reader(lambda: os.read(read_end, 65536))

    def child() -> bool:
        fresh = (sink.pending, sink.dropped) == (0, 0)
        sink.write(json.dumps({"child": os.getpid()}) + "\n")
        return fresh and sink.drain(WAIT)

    status: list[int] = []
    forked = threading.Thread(target=lambda: status.append(_in_child(child)))
    forked.start()
    reader.start()  # the reader comes back for both processes
    forked.join(WAIT + 10)
    assert status == [0]  # the child started clean and wrote its line out
    got = reader.wait_for(lambda got: _has_report(got) and any("child" in g for g in got))
    assert len([line for line in got if "child" in line]) == 1
    numbers = [line["n"] for line in got if "n" in line]
    assert len(numbers) == len(set(numbers)) == len(lines) - parent_dropped  # none twice


def test_a_child_forked_while_a_write_is_in_progress_can_write() -> None:
    parent = os.getpid()
    release = threading.Event()
    entered = threading.Event()

    class SlowInParent(io.StringIO):
        def write(self, text: str) -> int:
            if os.getpid() == parent:
                entered.set()
                release.wait(WAIT)  # another thread is mid-write when the fork comes
            return super().write(text)

    stream = SlowInParent()
    sink = LogSink(stream)
    writer = threading.Thread(target=sink.write, args=("parent\n",))
    writer.start()
    try:
        assert entered.wait(WAIT)

        def child() -> bool:
            done = threading.Thread(target=sink.write, args=("child\n",), daemon=True)
            done.start()
            done.join(5)  # the parent's held lock, inherited, would keep it waiting
            return not done.is_alive() and stream.getvalue() == "child\n"

        assert _in_child(child) == 0
    finally:
        release.set()
        writer.join(WAIT)
    assert stream.getvalue() == "parent\n"


@pytest.mark.timeout(60)
def test_an_exiting_process_writes_its_pending_lines_if_the_reader_reads() -> None:
    import subprocess
    import sys

    from _proc import ROOT, env

    script = (
        "from runtime.telemetry import logsink\n"
        "from runtime.telemetry.logging import make_logger\n"
        "logsink.EXIT_DRAIN_SECONDS = 60.0  # generous: the test reads once told\n"
        "log = make_logger(fmt='json')\n"
        "for n in range(1500): log.info('line', n=n)  # ~150 KB: 64 KiB fit in the pipe\n"
        "print(logsink.stderr_sink().pending, flush=True)\n"
    )
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=write_end)  # fmt: skip
    os.close(write_end)
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) > 0  # lines pending, and the process leaving
        with os.fdopen(read_end) as pipe:
            lines = [json.loads(line) for line in pipe]
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert [line["n"] for line in lines] == list(range(1500))
