"""Settings: one frozen, keyword-only object, filled from defaults, then
``RUNTIME_*`` environment variables, then command-line flags.

Every invalid value raises :class:`ConfigError` naming the setting (as its
flag, or as the ``RUNTIME_*`` variable when the value came from one) and the
fix; only the CLI turns that into a message and exit status 2.

Each setting is declared once, as a field of :class:`Settings` made by
:func:`setting`: its default, type, range, help text and who takes it; the
command line's flags, the ``RUNTIME_*`` variables, ``--help``, the README's
table (``make readme``) and the keyword arguments ``app`` passes on
(:meth:`Settings.options`) are derived from it.

Every numeric setting has a declared range (:data:`LIMITS`), checked whichever
way the value arrives (a flag, a variable, ``Settings(...)`` in code): no NaN,
no infinity, nothing a socket, a ``select()`` or the machine cannot take.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .telemetry.logging import FORMATS, LEVELS

__all__ = [
    "CONSUMERS", "GROUPS", "LIMITS", "MAX_SECONDS", "MAX_WORKERS", "Address", "ConfigError",
    "Limit", "Settings", "declared", "default_text", "environment_variables", "flag", "help_text",
    "named_as_given", "parse_address", "parse_value", "readme_table", "setting", "settings_from",
]  # fmt: skip

MODES = ("sync", "thread", "fork", "prefork")
OVERLOAD = ("wait", "reject")
TRACES = ("none", "console", "otlp")


class ConfigError(ValueError):
    """A setting has a value the runtime cannot use."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


#: The longest duration any setting takes: one day.  Longer is a typo or means
#: "never", which has its own spelling (``none``, or 0 for ``--worker-timeout``).
#: It keeps every deadline far inside what the serving loop's ``select()`` takes
#: (epoll: 2**31 - 1 ms, 24.8 days), ``threading.TIMEOUT_MAX`` and socket time-outs.
MAX_SECONDS = 86_400.0
#: Worker processes (and, in pre-fork mode, ``--max-children``, which caps them): each
#: is a whole interpreter (tens of MB), so 100000 is a typo that would fork until the
#: machine stops; 1024 is beyond any sensible multiple of the largest machines' cores.
MAX_WORKERS = 1024


@dataclass(frozen=True)
class Limit:
    """The values a numeric setting takes: ``low`` to ``high``, finite.

    ``above``: ``low`` itself is excluded (a time-out of 0 would end everything at
    once).  ``seconds``: a duration.  ``off``: ``none`` (or ``off``) turns it off.
    ``zero``: what 0 means, when it means something.  ``why``: the reason for the
    range, for the README's table.
    """

    low: float
    high: float
    seconds: bool = False
    above: bool = False
    off: bool = False
    zero: str = ""
    why: str = ""

    def rule(self) -> str:
        """The range in words, as the error messages give it."""
        lowest = "more than" if self.above else "at least"
        zero = f" (0: {self.zero})" if self.zero else ""
        unit = " seconds" if self.seconds else ""
        off = ", or none (off)" if self.off else ""
        high = _number(self.high)
        return f"must be {lowest} {_number(self.low)}{zero} and at most {high}{unit}{off}"

    def span(self) -> str:
        """The range in a few characters, for a flag's help: ``1-1024``, ``>0-86400``."""
        return f"{'>' if self.above else ''}{_number(self.low)}-{_number(self.high)}"

    def words(self) -> str:
        """The range for the README's table: ``0 (never) to 86400 s, or none``."""
        low = f"over {_number(self.low)}" if self.above else _number(self.low)
        zero = f" ({self.zero})" if self.zero else ""
        unit = " s" if self.seconds else ""
        off = ", or `none`" if self.off else ""
        return f"{low}{zero} to {_number(self.high)}{unit}{off}"

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return (value > self.low if self.above else value >= self.low) and value <= self.high

    def error(self, setting: str, value: float, raw: str | None = None) -> ConfigError:
        """The ConfigError for *value* (given as the text *raw*, if it was text)."""
        shown = raw.strip() if raw is not None else _number(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        finite = "" if math.isfinite(value) else " (not a finite number)"
        return ConfigError(setting, f"{self.rule()}, got {shown}{finite}")


_DAY = "a day: longer is a typo"
_SECONDS = Limit(0, MAX_SECONDS, seconds=True, why=_DAY)
_TIME_LIMIT = Limit(0, MAX_SECONDS, seconds=True, above=True, off=True, why=_DAY)
_PROCESSES = "each worker is a whole interpreter, tens of MB"


def _number(value: float) -> str:
    """1.0 -> "1", 0.001 -> "0.001", 1e9 -> "1000000000": as a person would write it."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class Address:
    """Where a server listens: ``transport`` is tcp, udp, unix or unixgram."""

    transport: str
    address: Any  # (host, port) or a filesystem path
    family: int
    #: An inherited listening socket (``fd://N``, systemd's LISTEN_FDS): serve it, bind nothing.
    fd: int | None = None

    def __str__(self) -> str:
        if self.fd is not None:
            return f"fd://{self.fd}"
        if self.transport in ("unix", "unixgram"):
            return f"{self.transport}:{self.address}"
        host, port = self.address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'udp://' if self.transport == 'udp' else ''}{host}:{port}"


def parse_address(text: str, setting: str = "--bind") -> Address:
    """Parse ``host:port``, ``tcp://host:port``, ``udp://host:port``, ``unix:/path``,
    ``unixgram:/path``; IPv6 hosts in brackets (``[::1]:9000``)."""
    raw = text.strip()
    if raw.startswith("fd://"):
        return _inherited(text, raw[5:], setting)
    for prefix in ("unix:", "unixgram:"):
        if raw.startswith(prefix):
            path = raw[len(prefix) :]
            if path.startswith("//"):
                path = path[2:]
            if not path:
                raise ConfigError(
                    setting, f"{text!r} has no socket path; use {prefix}/path/to.sock"
                )
            return Address(prefix[:-1], path, socket.AF_UNIX)
    transport = "tcp"
    for scheme in ("tcp://", "udp://"):
        if raw.startswith(scheme):
            transport, raw = scheme[:3], raw[len(scheme) :]
            break
    host, sep, port_text = raw.rpartition(":")
    if not sep or not port_text:
        raise ConfigError(setting, f"{text!r} is not host:port (e.g. 127.0.0.1:9000)")
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    elif ":" in host:
        raise ConfigError(setting, f"{text!r}: put an IPv6 host in brackets, e.g. [::1]:9000")
    else:
        family = socket.AF_INET
    if not host:
        raise ConfigError(
            setting, f"{text!r} has no host; use 0.0.0.0:{port_text} for all interfaces"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(setting, f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(setting, f"{text!r}: port must be 0-65535")
    return Address(transport, (host, port), family)


def parse_addresses(text: str, setting: str = "--bind") -> list[Address]:
    """One address or several, comma-separated (``--bind`` given more than once).

    Several must all be stream addresses of one kind, all tcp (IPv4 and IPv6 mixed)
    or all unix, and distinct: one server serves them with one handler, and a
    datagram server reads one socket.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > 1 and not all(parts):
        raise ConfigError(setting, f"{text!r} has an empty address (give each once, no comma)")
    addresses = [parse_address(part, setting) for part in parts]
    if len(addresses) == 1:
        return addresses
    kinds = {a.transport for a in addresses}
    if kinds & {"udp", "unixgram"}:
        raise ConfigError(setting, f"{text!r}: a datagram server reads one socket; give one "
                          "udp or unixgram address")  # fmt: skip
    if len(kinds) > 1:
        raise ConfigError(setting, f"{text!r}: one server serves all tcp or all unix addresses, "
                          "not both")  # fmt: skip
    seen: set[str] = set()
    for address in addresses:
        if str(address) in seen and not str(address).endswith(":0"):  # port 0: any free one
            raise ConfigError(setting, f"{str(address)!r} is given twice")
        seen.add(str(address))
    return addresses


def _inherited(text: str, number: str, setting: str) -> Address:
    """``fd://N``: the socket this process inherited as descriptor N (socket activation)."""
    if not number.isdigit():
        raise ConfigError(setting, f"{text!r}: the descriptor must be a number, e.g. fd://3")
    fd = int(number)
    try:  # look at it through a duplicate: closing that leaves N as it was
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise ConfigError(setting, f"{text!r}: descriptor {fd} is not an open socket "
                          f"({exc.strerror or exc})") from None  # fmt: skip
    with probe:
        kind = probe.type
        family = probe.family
        if kind == socket.SOCK_STREAM and not probe.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise ConfigError(setting, f"{text!r}: descriptor {fd} is not listening")
        local = probe.getsockname()
    if family == socket.AF_UNIX:
        transport = "unix" if kind == socket.SOCK_STREAM else "unixgram"
        path = local.decode() if isinstance(local, bytes) else local
        return Address(transport, path, family, fd)
    if family not in (socket.AF_INET, socket.AF_INET6) or kind not in (
        socket.SOCK_STREAM, socket.SOCK_DGRAM,
    ):  # fmt: skip
        raise ConfigError(setting, f"{text!r}: descriptor {fd} is not a TCP, UDP or Unix socket")
    return Address("tcp" if kind == socket.SOCK_STREAM else "udp", local, family, fd)


def activated_bind(environ: Mapping[str, str], pid: int) -> str | None:
    """``fd://3`` (``fd://3,fd://4`` for two, ...) when systemd (or another supervisor)
    passed this process listening sockets (``LISTEN_PID`` is *pid*, ``LISTEN_FDS`` at
    least 1): each one is served."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return None
    count = environ.get("LISTEN_FDS", "").strip()
    if not count.isdigit() or int(count) < 1:
        raise ConfigError("LISTEN_FDS", f"{count!r}: expected the number of sockets passed, >= 1")
    return ",".join(f"fd://{3 + i}" for i in range(int(count)))  # from SD_LISTEN_FDS_START


#: The groups of ``--help`` (and of the README's table), in their order.
GROUPS = (
    "server and its pool", "pre-fork (--mode prefork)", "drain and probes", "time limits",
    "telemetry",
)  # fmt: skip
SERVER, PREFORK, DRAIN, TIME_LIMITS, TELEMETRY = GROUPS
#: Who takes a setting as a keyword argument (``Settings.options``): the engine
#: (``lifecycle.Runtime``), a single server's unit (``lifecycle.ServerUnit``), the
#: pre-fork pool (``prefork.Prefork``), the server class (as an attribute).
CONSUMERS = ("engine", "unit", "pool", "server")


def setting(
    default: Any,
    group: str,
    text: str,
    *,
    metavar: str | None = None,
    limit: Limit | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
    takes: tuple[str, ...] | Mapping[str, str] = (),
    short: str | None = None,
    repeat: str | None = None,
) -> Any:
    """Declare a setting: its default, its ``--help`` group and *text*, its range.

    The flag (``--kebab-case``), the ``RUNTIME_UPPER_SNAKE`` variable, the range
    check, the help line (*text*, then the range unless *text* places it with
    ``{range}``, then the default: *shown*, or the default as a user writes it)
    and the README's table all come from this one declaration.  *takes*: the
    consumers (:data:`CONSUMERS`) that get it as a keyword argument of the same
    name, or a mapping consumer -> keyword.  *short*: a one-letter flag too (``-b``),
    for the few options gunicorn's users type by hand.  *repeat*: the flag may be
    given more than once; the values are joined with this separator, which is how
    the variable lists them (``RUNTIME_BIND=0.0.0.0:9000,[::]:9000``).
    """
    if not isinstance(takes, Mapping):
        takes = {consumer: "" for consumer in takes}
    if group not in GROUPS or not set(takes) <= set(CONSUMERS):
        raise ValueError(f"bad declaration: {group!r}, {takes!r}")
    return dataclasses.field(
        default=default,
        metadata={
            "group": group, "help": text, "metavar": metavar, "limit": limit,
            "choices": choices, "shown": shown, "takes": dict(takes), "short": short,
            "repeat": repeat,
        },
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that configures one runtime, each setting declared once (:func:`setting`):
    flags in ``--kebab-case``, environment variables as ``RUNTIME_UPPER_SNAKE``."""

    handler: str = "echo"  # the positional HANDLER (see cli._usage)
    # -- server and its pool
    bind: str | None = setting(
        None, SERVER, "host:port, udp://host:port, unix:/path, unixgram:/path or fd://N (an "
        "inherited listening socket; systemd's LISTEN_FDS when not given); give it more than "
        "once to listen on each tcp (or each unix) address", metavar="ADDR",
        shown="127.0.0.1:9000, or the example's", short="-b", repeat=",",
    )  # fmt: skip
    mode: str = setting(
        "thread", SERVER, "sync: one request at a time; thread: a bounded thread pool; "
        "fork: a child process each; prefork: supervised worker processes", choices=MODES,
    )  # fmt: skip
    server: str | None = setting(
        None, SERVER, "socketserver server class to instrument, e.g. http.server:HTTPServer",
        metavar="MODULE:CLASS", shown="the example's, else the socketserver class of --bind",
    )  # fmt: skip
    max_children: int | None = setting(
        None, SERVER, "ceiling of worker threads or forked children, {range}; in prefork mode "
        f"of worker processes, at most {MAX_WORKERS}", metavar="N",
        shown="128 threads, 40 children; in prefork 2 x --workers", takes={"pool": "max_workers"},
        # Threads or forked children each hold a connection and a stack: tens of thousands
        # are a typo.
        limit=Limit(1, 4096, why="each holds a connection and a stack"),
    )  # fmt: skip
    queue_size: int | None = setting(
        None, SERVER, "thread hand-off queue", metavar="N", shown="--max-children",
        limit=Limit(0, 65536, why="each queued connection holds a file descriptor"),
    )  # fmt: skip
    overload: str = setting(
        "wait", SERVER, "when the pool is full: wait (backpressure) or reject", choices=OVERLOAD,
        takes=("server",),
    )  # fmt: skip
    backlog: int = setting(
        128, SERVER, "listen backlog (the kernel caps it at net.core.somaxconn)", metavar="N",
        takes={"server": "request_queue_size"},
        # The kernel silently caps it at net.core.somaxconn (4096 by default since Linux 5.4;
        # the field was 16 bits before), and Python rejects more than a C int.
        limit=Limit(1, 65535, why="the kernel caps it at `net.core.somaxconn` anyway"),
    )  # fmt: skip
    tcp_nodelay: bool = setting(
        True, SERVER, "set TCP_NODELAY on accepted connections", takes=("server",)
    )
    certfile: str | None = setting(
        None, SERVER, "serve TLS with this certificate chain (PEM; the key too unless "
        "--keyfile); reloaded on SIGHUP", metavar="PATH", shown="none: plain TCP",
    )  # fmt: skip
    keyfile: str | None = setting(
        None, SERVER, "the certificate's private key (PEM)", metavar="PATH",
        shown="in --certfile",
    )  # fmt: skip
    ca_certs: str | None = setting(
        None, SERVER, "CA certificates (PEM) that client certificates are checked against",
        metavar="PATH",
    )  # fmt: skip
    cert_reqs: str = setting(
        "none", SERVER, "client certificates: none, optional (checked when sent) or required",
        choices=("none", "optional", "required"),
    )  # fmt: skip
    proxy_protocol: bool = setting(
        False, SERVER, "each connection starts with a PROXY protocol header (v1 or v2, as an "
        "AWS NLB or HAProxy send-proxy sends): the client address it carries is the "
        "connection's; a missing, malformed or late one (--header-timeout) closes it",
        takes=("server",),
    )  # fmt: skip
    proxy_allow_from: str = setting(
        "127.0.0.1", SERVER, "the balancers whose PROXY headers are believed: comma-separated "
        "addresses or networks (10.0.0.0/8), or *; a header from any other peer closes the "
        "connection", metavar="ADDRS", takes=("server",),
    )  # fmt: skip
    # -- pre-fork
    workers: int | None = setting(
        None, PREFORK, "worker processes", metavar="N", shown="the usable CPUs",
        limit=Limit(1, MAX_WORKERS, why=_PROCESSES), short="-w",
    )  # fmt: skip
    threads: int = setting(
        0, PREFORK, "threads per worker", metavar="N", shown="0: none",
        limit=Limit(0, 1024, why="per worker: workers x threads threads in all"),
    )  # fmt: skip
    min_workers: int = setting(
        1, PREFORK, "ready with this many up", metavar="N", takes=("pool",),
        limit=Limit(1, MAX_WORKERS, why=_PROCESSES),
    )  # fmt: skip
    worker_timeout: float = setting(
        30.0, PREFORK, "abort (stack logged) and replace a worker silent this long, {range} "
        "and at least 2 x --poll-interval, 0: never", metavar="SECONDS", takes=("pool",),
        limit=Limit(0, MAX_SECONDS, seconds=True, zero="never",
                    why="and at least 2 x `--poll-interval`: an idle worker beats once per "
                    "poll interval"),
    )  # fmt: skip
    max_requests: int = setting(
        0, PREFORK, "recycle a worker after N requests", metavar="N", shown="0: never",
        takes=("pool",),
        # A billion requests is "never" in practice (which is 0); stays a 64-bit count.
        limit=Limit(0, 1_000_000_000, zero="never", why="a billion is never in practice"),
    )  # fmt: skip
    max_requests_jitter: int = setting(
        0, PREFORK, "plus up to N, at random", metavar="N", takes=("pool",),
        limit=Limit(0, 1_000_000_000, why="a billion is never in practice"),
    )  # fmt: skip
    reuse_port: bool = setting(
        False, PREFORK, "a SO_REUSEPORT listener per worker instead of one shared",
        takes=("pool",),
    )  # fmt: skip
    worker_tmp_dir: str | None = setting(
        None, PREFORK, "where the supervisor makes the folder of the workers' metric files and "
        "stacks; a read-only root needs a writable mount there, or e.g. /dev/shm",
        metavar="DIR", shown="the system's, $TMPDIR or /tmp", takes=("pool",),
    )  # fmt: skip
    # -- drain and probes
    admin: str | None = setting(
        "127.0.0.1:9100", DRAIN, "admin port for /metrics /livez /readyz and the status "
        "page; off: none", metavar="HOST:PORT",
    )  # fmt: skip
    drain_delay: float = setting(
        5.0, DRAIN, "after SIGTERM, keep serving this long with readiness failing",
        metavar="SECONDS", limit=_SECONDS, takes=("engine",),
    )  # fmt: skip
    graceful_timeout: float = setting(
        30.0, DRAIN, "then wait this long for requests in flight before forcing them",
        metavar="SECONDS", limit=_SECONDS, takes=("engine", "pool"),
    )  # fmt: skip
    flush_timeout: float = setting(
        5.0, DRAIN, "then wait at most this long to export the last spans (the rest are "
        "counted as dropped)", metavar="SECONDS", limit=_SECONDS, takes=("engine", "pool"),
    )  # fmt: skip
    liveness_timeout: float = setting(
        30.0, DRAIN, "/livez fails when the serving loop made no progress for this long, "
        "{range} and at least 2 x --poll-interval", metavar="SECONDS", takes=("engine",),
        limit=Limit(0, MAX_SECONDS, seconds=True, above=True,
                    why="and at least 2 x `--poll-interval`, else `/livez` says stalled while "
                    "idle"),
    )  # fmt: skip
    poll_interval: float = setting(
        0.5, DRAIN, "how often an idle serving loop turns (heartbeat, deadlines)",
        metavar="SECONDS", takes=("engine", "unit", "pool"),
        # An idle serving loop turns (heartbeat, signals, deadlines) once per interval.
        limit=Limit(0.001, 60, seconds=True, why="below 1 ms an idle loop spins a core; "
                    "above a minute heartbeats and deadlines lag"),
    )  # fmt: skip
    # -- time limits
    connection_timeout: float | None = setting(
        60.0, TIME_LIMITS, "idle limit of a stream connection's reads and writes (a handler's "
        "own timeout attribute wins)", metavar="SECONDS", limit=_TIME_LIMIT, takes=("server",),
    )  # fmt: skip
    header_timeout: float | None = setting(
        10.0, TIME_LIMITS, "a new connection waits for its request without a worker (HTTP: "
        "the whole head; other handlers: if they set request_head_end), and is closed if it "
        "takes longer", metavar="SECONDS", limit=_TIME_LIMIT, takes=("server",),
    )  # fmt: skip
    request_warn_after: float | None = setting(
        30.0, TIME_LIMITS, "log (once, with its thread's stack) and count a request running "
        "longer", metavar="SECONDS", limit=_TIME_LIMIT, takes=("unit", "pool"),
    )  # fmt: skip
    request_timeout: float | None = setting(
        None, TIME_LIMITS, "end a request running longer: cut its connection, or kill its "
        "child", metavar="SECONDS", limit=_TIME_LIMIT, takes=("unit", "pool"),
    )  # fmt: skip
    # -- telemetry
    server_name: str | None = setting(
        None, TELEMETRY, "the 'server' metric label", metavar="NAME", shown="the handler's name"
    )
    metrics_prefix: str = setting(
        "socketserver_", TELEMETRY, "metric name prefix", metavar="PREFIX",
        takes={"pool": "prefix"},
    )  # fmt: skip
    log_level: str = setting(
        "info", TELEMETRY, "debug also prints the traceback behind a start-up error (e.g. a "
        "handler module that fails to import) after its one line", choices=LEVELS,
    )  # fmt: skip
    log_format: str = setting(
        "auto", TELEMETRY, "auto: console on a terminal, else json", choices=FORMATS
    )
    access_log: bool = setting(True, TELEMETRY, "one log line per request", takes=("server",))
    traces: str = setting(
        "none", TELEMETRY, "trace exporter: console or otlp (OTLP/HTTP; "
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...)",
        choices=TRACES, shown="none, or OTEL_TRACES_EXPORTER",
    )  # fmt: skip

    def options(self, consumer: str) -> dict[str, Any]:
        """The keyword arguments *consumer* (:data:`CONSUMERS`) takes, from the declarations."""
        found = {}
        for f in dataclasses.fields(self):
            keyword = f.metadata.get("takes", {}).get(consumer)
            if keyword is not None:
                found[keyword or f.name] = getattr(self, f.name)
        return found

    def __post_init__(self) -> None:
        for f in declared():  # the choices, as declared
            options = f.metadata["choices"]
            value = getattr(self, f.name)
            if options and value not in options:
                raise ConfigError(flag(f.name), f"{value!r} is not one of {', '.join(options)}")
        self._check_numbers()
        prefork = {
            "workers": self.workers is not None, "threads": self.threads != 0,
            "max_requests": self.max_requests != 0, "reuse_port": self.reuse_port,
            "worker_tmp_dir": self.worker_tmp_dir is not None,
        }  # fmt: skip
        for name, given in prefork.items():
            if given and self.mode != "prefork":
                raise ConfigError(flag(name), "applies to --mode prefork only")
        if self.worker_tmp_dir is not None and not self.worker_tmp_dir.strip():
            raise ConfigError("--worker-tmp-dir", "is empty; give a writable folder, e.g. /dev/shm")
        if self.mode == "prefork" and self.max_children is not None:
            if self.max_children > MAX_WORKERS:
                raise ConfigError(
                    "--max-children",
                    f"must be at most {MAX_WORKERS} in --mode prefork (it caps worker "
                    f"processes), got {self.max_children}",
                )
            if self.max_children < self.worker_count:
                raise ConfigError(
                    "--max-children",
                    f"{self.max_children} is below --workers {self.worker_count} (it caps workers)",
                )
        # An idle serving loop beats its heartbeat once per poll interval: a liveness (or,
        # for a pre-fork worker, heartbeat) time-out within two intervals fails a healthy one.
        self._at_least_twice("liveness_timeout", "/livez would say stalled while idle")
        if self.mode == "prefork" and self.worker_timeout > 0:
            self._at_least_twice("worker_timeout", "idle workers would be aborted as hung")
        addresses = parse_addresses(self.bind) if self.bind is not None else []
        if addresses and self.reuse_port:
            if addresses[0].transport not in ("tcp", "udp"):
                raise ConfigError("--reuse-port", f"needs a tcp or udp address, not {self.bind!r}")
            if any(address.fd is not None for address in addresses) or len(addresses) > 1:
                raise ConfigError(
                    "--reuse-port", f"each worker binds its own socket: not with {self.bind!r}"
                )
        for entry in self.proxy_allow_from.split(","):
            if entry.strip() != "*":
                try:
                    ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    raise ConfigError(
                        "--proxy-allow-from", f"{entry.strip()!r} is not an address, a network "
                        "(10.0.0.0/8) or *",
                    ) from None  # fmt: skip
        stream = not addresses or addresses[0].transport in ("tcp", "unix")
        if self.certfile is None:
            for name in ("keyfile", "ca_certs"):
                if getattr(self, name) is not None:
                    raise ConfigError(flag(name), "needs --certfile (the server's certificate)")
            if self.cert_reqs != "none":
                raise ConfigError("--cert-reqs", "needs --certfile (the server's certificate)")
        elif not stream:
            raise ConfigError("--certfile", f"TLS needs a stream address, not {self.bind!r}")
        if self.cert_reqs != "none" and self.ca_certs is None:
            raise ConfigError("--cert-reqs", "needs --ca-certs to check client certificates with")
        if self.proxy_protocol and not stream:
            raise ConfigError("--proxy-protocol", f"needs a stream address, not {self.bind!r}")
        if self.admin_address is not None and self.admin_address.transport != "tcp":
            raise ConfigError("--admin", f"{self.admin!r}: the admin port is HTTP, use host:port")
        if ":" not in self.handler and not self.handler.isidentifier():
            raise ConfigError(
                "HANDLER", f"{self.handler!r} is not module:Class nor an example name"
            )
        if self.server is not None and ":" not in self.server:
            raise ConfigError(
                "--server", f"{self.server!r} is not module:Class (e.g. http.server:HTTPServer)"
            )
        if not self.metrics_prefix.replace("_", "a").isalnum() or self.metrics_prefix[:1].isdigit():
            raise ConfigError(
                "--metrics-prefix", f"{self.metrics_prefix!r} is not a valid metric name prefix"
            )

    def _check_numbers(self) -> None:
        """Every numeric setting: the right type, finite, within its :data:`LIMITS`."""
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is None and "None" in str(_FIELDS[name].type):
                continue
            whole = str(_FIELDS[name].type).startswith("int")
            kinds = (int,) if whole else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                what = "a whole number" if whole else "a number of seconds"
                raise ConfigError(flag(name), f"must be {what}, got {value!r}")
            if not limit.allows(value):
                raise limit.error(flag(name), value)

    def _at_least_twice(self, name: str, why: str) -> None:
        """*name* (a time-out) must be at least twice ``poll_interval``."""
        value: float = getattr(self, name)
        if value >= 2 * self.poll_interval:
            return
        # Name the one that was changed: the other one is at its default.
        if value == _FIELDS[name].default:
            raise ConfigError(
                "--poll-interval",
                f"must be at most half of {flag(name)} ({_number(value)}; {why}), "
                f"got {_number(self.poll_interval)}",
            )
        raise ConfigError(
            flag(name),
            f"must be at least twice --poll-interval ({_number(self.poll_interval)}; {why}), "
            f"got {_number(value)}",
        )

    @property
    def worker_count(self) -> int:
        """Pre-fork workers: ``workers``, or the CPUs this process may run on."""
        if self.workers is not None:
            return self.workers
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )

    @property
    def admin_address(self) -> Address | None:
        if self.admin is None or self.admin.lower() in ("", "off", "none"):
            return None
        return parse_address(self.admin, "--admin")


def flag(name: str) -> str:
    """Setting *name*'s flag: ``max_children`` -> ``--max-children``."""
    return "--" + name.replace("_", "-")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
#: Every numeric setting's range (from the declarations).
LIMITS: dict[str, Limit] = {
    f.name: f.metadata["limit"] for f in _FIELDS.values() if f.metadata.get("limit") is not None
}


def declared() -> list[dataclasses.Field[Any]]:
    """The settings a flag sets (all but the positional HANDLER), in declaration order."""
    return [f for f in _FIELDS.values() if "group" in f.metadata]


def help_text(name: str) -> str:
    """Setting *name*'s ``--help`` line: its text, range and default, as declared."""
    f = _FIELDS[name]
    text: str = f.metadata["help"]
    limit: Limit | None = f.metadata["limit"]
    if limit is not None:
        span = limit.span() + (" or 'none'" if limit.off else "")
        text = text.replace("{range}", span) if "{range}" in text else f"{text}, {span}"
    return f"{text} (default: {default_text(name)})"


def default_text(name: str) -> str:
    """Setting *name*'s default as a user writes it: ``5``, ``none``, ``on``."""
    f = _FIELDS[name]
    shown = f.metadata.get("shown")
    if shown:
        return str(shown)
    value = f.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return _number(value)
    return str(value)


README_BEGIN = "<!-- settings: made by `make readme` from runtime/config.py -->"
README_END = "<!-- settings end -->"


def readme_table() -> str:
    """The README's table of settings, made from the declarations (``make readme``)."""
    rows = [
        "| flag | variable | default | values | what it does |",
        "|---|---|---|---|---|",
    ]
    for f in declared():
        m = f.metadata
        limit: Limit | None = m["limit"]
        if m["choices"]:
            values = ", ".join(m["choices"])
        elif limit is not None:
            values = limit.words() + (f" ({limit.why})" if limit.why else "")
        elif str(f.type).startswith("bool"):
            values = "on, off"
        else:
            values = ""
        what = m["help"].replace("{range}", limit.span() if limit else "").replace("|", "\\|")
        default = default_text(f.name)
        flags = f"`{m['short']}`, `{flag(f.name)}`" if m.get("short") else f"`{flag(f.name)}`"
        rows.append(f"| {flags} | `RUNTIME_{f.name.upper()}` | {default} | {values} | {what} |")
    return "\n".join(rows) + "\n"


def parse_value(name: str, raw: str, source: str) -> Any:
    """The text *raw* (of a flag or a ``RUNTIME_*`` variable) as setting *name*'s value.

    Raises :class:`ConfigError` naming *source* (the flag or the variable): numbers
    are checked against :data:`LIMITS` here already, so the message shows the text as
    given (``1e309``, not ``inf``).  ``none`` (and ``""``) is None for settings that
    take None; ``off`` too for durations that can be turned off.
    """
    kind = str(_FIELDS[name].type)
    text = raw.strip().lower()
    limit = LIMITS.get(name)
    if "None" in kind and (text in ("", "none") or (text == "off" and limit and limit.off)):
        return None
    if kind.startswith("bool"):
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(source, f"{_quoted(raw)} is not on or off (true/false, yes/no, 1/0)")
    if not kind.startswith(("int", "float")):
        return raw
    value: int | float
    try:
        value = int(raw) if kind.startswith("int") else float(raw)
    except ValueError:
        what = "a whole number" if kind.startswith("int") else "a number"
        rule = f"; it {limit.rule()}" if limit else ""
        raise ConfigError(source, f"{_quoted(raw)} is not {what}{rule}") from None
    if limit is not None and not limit.allows(value):
        raise limit.error(source, value, raw)
    return value


def _quoted(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:37] + "...")


# Kubernetes injects these for a Service named "runtime" (service links); never settings.
_SERVICE_LINK = re.compile(
    r"RUNTIME_(SERVICE_(HOST|PORT)(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$"
)


def environment_variables(environ: Mapping[str, str] | None) -> dict[str, str]:
    """Setting name -> the ``RUNTIME_*`` variable in *environ* that sets it.

    Kubernetes' service-link variables are left out; an unknown ``RUNTIME_*``
    variable raises :class:`ConfigError` naming it, so a typo never passes silently.
    """
    found: dict[str, str] = {}
    for key in environ or {}:
        if not key.startswith("RUNTIME_") or _SERVICE_LINK.match(key):
            continue
        name = key[len("RUNTIME_") :].lower()
        if name not in _FIELDS:
            known = ", ".join("RUNTIME_" + n.upper() for n in _FIELDS)
            raise ConfigError(key, f"unknown setting; known: {known}")
        found[name] = key
    return found


def named_as_given(setting: str, variables: Mapping[str, str]) -> str:
    """*setting* as the user gave it: a flag (or ``HANDLER``), the way library code names
    every setting, becomes its ``RUNTIME_*`` variable when *variables* (setting name ->
    variable, for the values that came from one) says the value came from there.
    Anything else (a variable already, ``OTEL_*``) is returned as it is.
    """
    if setting == "HANDLER":
        name = "handler"
    elif setting.startswith("--"):
        name = setting[2:].replace("-", "_")
    else:
        return setting
    return variables.get(name, setting)


def settings_from(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults, then ``RUNTIME_*`` variables from *environ*, then *overrides* (the flags
    that were given, as values; a None value there means "none", e.g.
    ``--request-timeout none``).

    Raises :class:`ConfigError` naming the variable for a bad value that came from
    one, and for unknown ``RUNTIME_*`` variables too, so a typo never passes silently.
    """
    environ = environ or {}
    overrides = overrides or {}
    variables = environment_variables(environ)
    values = {name: parse_value(name, environ[key], key) for name, key in variables.items()}
    # The standard OpenTelemetry variable chooses the exporter unless RUNTIME_TRACES
    # or --traces do (the rest of OTEL_* is read by the SDK and the exporter).
    otel = environ.get("OTEL_TRACES_EXPORTER")
    if otel is not None and "traces" not in values:
        otel = otel.strip().lower()
        if otel not in TRACES:
            raise ConfigError("OTEL_TRACES_EXPORTER", f"{otel!r} is not one of {', '.join(TRACES)}")
        values["traces"] = otel
    values.update(overrides)  # flags given explicitly, None included ("none")
    if values.get("bind") is None:  # socket activation, unless told where to bind
        activated = activated_bind(environ, os.getpid())
        if activated is not None:
            values["bind"] = activated
    try:
        return Settings(**values)
    except ConfigError as exc:
        # Settings names flags; a value that came from a variable is named as the variable.
        from_environment = {n: v for n, v in variables.items() if n not in overrides}
        given = named_as_given(exc.setting, from_environment)
        if given != exc.setting:
            raise ConfigError(given, exc.message) from None
        raise


def write_readme(path: str) -> bool:
    """Put :func:`readme_table` between the markers in the README at *path*; True if changed."""
    with open(path) as f:
        text = f.read()
    head, rest = text.split(README_BEGIN + "\n", 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_BEGIN}\n{readme_table()}{README_END}{tail}"
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    return new != text
