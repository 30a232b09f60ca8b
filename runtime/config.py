"""Settings: one frozen, keyword-only object, filled from defaults, then
``RUNTIME_*`` environment variables, then command-line flags.

Every invalid value raises :class:`ConfigError` naming the setting (as its
flag, or as the ``RUNTIME_*`` variable when the value came from one) and the
fix; only the CLI turns that into a message and exit status 2.

Every numeric setting has a declared range (:data:`LIMITS`), checked whichever
way the value arrives (a flag, a variable, ``Settings(...)`` in code): no NaN,
no infinity, nothing a socket, a ``select()`` or the machine cannot take.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .telemetry.logging import FORMATS, LEVELS

__all__ = [
    "LIMITS", "MAX_SECONDS", "MAX_WORKERS", "Address", "ConfigError", "Limit", "Settings",
    "environment_variables", "named_as_given", "parse_address", "parse_value", "settings_from",
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
    ``zero``: what 0 means, when it means something.
    """

    low: float
    high: float
    seconds: bool = False
    above: bool = False
    off: bool = False
    zero: str = ""

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


#: Every numeric setting's range.  Counts protect the machine; durations are seconds.
LIMITS: dict[str, Limit] = {
    # Threads (thread mode, default 128) or forked children (fork mode, default 40);
    # each holds a connection and a stack, so tens of thousands are a typo.
    "max_children": Limit(1, 4096),
    "workers": Limit(1, MAX_WORKERS),
    "min_workers": Limit(1, MAX_WORKERS),
    "threads": Limit(0, 1024),  # per worker; workers x threads threads in all
    # Connections accepted and waiting for a thread, each holding a file descriptor.
    "queue_size": Limit(0, 65536),
    # listen(): the kernel silently caps it at net.core.somaxconn (4096 by default since
    # Linux 5.4; the field was 16 bits before), and Python rejects more than a C int.
    "backlog": Limit(1, 65535),
    # A billion requests is "never" in practice (which is 0); stays a 64-bit count.
    "max_requests": Limit(0, 1_000_000_000, zero="never"),
    "max_requests_jitter": Limit(0, 1_000_000_000),
    "worker_timeout": Limit(0, MAX_SECONDS, seconds=True, zero="never"),
    "drain_delay": Limit(0, MAX_SECONDS, seconds=True),
    "graceful_timeout": Limit(0, MAX_SECONDS, seconds=True),
    "flush_timeout": Limit(0, MAX_SECONDS, seconds=True),
    "liveness_timeout": Limit(0, MAX_SECONDS, seconds=True, above=True),
    "connection_timeout": Limit(0, MAX_SECONDS, seconds=True, above=True, off=True),
    "header_timeout": Limit(0, MAX_SECONDS, seconds=True, above=True, off=True),
    "request_warn_after": Limit(0, MAX_SECONDS, seconds=True, above=True, off=True),
    "request_timeout": Limit(0, MAX_SECONDS, seconds=True, above=True, off=True),
    # An idle serving loop turns (heartbeat, signals, deadlines) once per interval:
    # below 1 ms it spins a core, above a minute heartbeats and drain deadlines lag.
    "poll_interval": Limit(0.001, 60, seconds=True),
}


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

    def __str__(self) -> str:
        if self.transport in ("unix", "unixgram"):
            return f"{self.transport}:{self.address}"
        host, port = self.address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'udp://' if self.transport == 'udp' else ''}{host}:{port}"


def parse_address(text: str, setting: str = "--bind") -> Address:
    """Parse ``host:port``, ``tcp://host:port``, ``udp://host:port``, ``unix:/path``,
    ``unixgram:/path``; IPv6 hosts in brackets (``[::1]:9000``)."""
    raw = text.strip()
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


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that configures one runtime. Flags in ``--kebab-case``,
    environment variables as ``RUNTIME_UPPER_SNAKE``."""

    handler: str = "echo"
    bind: str | None = None  # None: the example's default, else 127.0.0.1:9000
    mode: str = "thread"
    server: str | None = None  # module:Class, e.g. http.server:HTTPServer
    max_children: int | None = None  # None: the pool's default (128 threads, 40 children)
    # prefork: worker processes (None: usable CPUs), threads in each (0: one request at a time)
    workers: int | None = None
    threads: int = 0
    min_workers: int = 1  # readiness needs this many workers up
    worker_timeout: float = 30.0  # a worker without a heartbeat this long is aborted (0: never)
    max_requests: int = 0  # recycle a worker after this many requests (0: never)
    max_requests_jitter: int = 0
    reuse_port: bool = False  # prefork: a SO_REUSEPORT listener per worker, not one shared
    queue_size: int | None = None  # None: max_children
    overload: str = "wait"
    backlog: int = 128
    tcp_nodelay: bool = True
    admin: str | None = "127.0.0.1:9100"  # None or "off": no admin port
    drain_delay: float = 5.0
    graceful_timeout: float = 30.0
    liveness_timeout: float = 30.0
    connection_timeout: float | None = 60.0  # idle limit per stream connection
    request_warn_after: float | None = 30.0  # None: no slow-request warnings
    request_timeout: float | None = None  # None: requests may run as long as they like
    poll_interval: float = 0.5
    flush_timeout: float = 5.0  # the drain's deadline for exporting spans
    # A new connection's deadline for its first request (HTTP: the whole head); None: off.
    header_timeout: float | None = 10.0
    worker_tmp_dir: str | None = None  # prefork: where its folder goes (None: the temp dir)
    server_name: str | None = None
    metrics_prefix: str = "socketserver_"
    log_level: str = "info"
    log_format: str = "auto"
    access_log: bool = True
    traces: str = "none"

    def __post_init__(self) -> None:
        def choice(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                raise ConfigError(_flag(name), f"{value!r} is not one of {', '.join(options)}")

        choice("mode", self.mode, MODES)
        choice("overload", self.overload, OVERLOAD)
        choice("log_level", self.log_level, LEVELS)
        choice("log_format", self.log_format, FORMATS)
        choice("traces", self.traces, TRACES)
        self._check_numbers()
        prefork = {
            "workers": self.workers is not None, "threads": self.threads != 0,
            "max_requests": self.max_requests != 0, "reuse_port": self.reuse_port,
            "worker_tmp_dir": self.worker_tmp_dir is not None,
        }  # fmt: skip
        for name, given in prefork.items():
            if given and self.mode != "prefork":
                raise ConfigError(_flag(name), "applies to --mode prefork only")
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
        if self.bind is not None:
            address = parse_address(self.bind)
            if self.reuse_port and address.transport not in ("tcp", "udp"):
                raise ConfigError("--reuse-port", f"needs a tcp or udp address, not {self.bind!r}")
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
                raise ConfigError(_flag(name), f"must be {what}, got {value!r}")
            if not limit.allows(value):
                raise limit.error(_flag(name), value)

    def _at_least_twice(self, name: str, why: str) -> None:
        """*name* (a time-out) must be at least twice ``poll_interval``."""
        value: float = getattr(self, name)
        if value >= 2 * self.poll_interval:
            return
        # Name the one that was changed: the other one is at its default.
        if value == _FIELDS[name].default:
            raise ConfigError(
                "--poll-interval",
                f"must be at most half of {_flag(name)} ({_number(value)}; {why}), "
                f"got {_number(self.poll_interval)}",
            )
        raise ConfigError(
            _flag(name),
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


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
    try:
        return Settings(**values)
    except ConfigError as exc:
        # Settings names flags; a value that came from a variable is named as the variable.
        from_environment = {n: v for n, v in variables.items() if n not in overrides}
        given = named_as_given(exc.setting, from_environment)
        if given != exc.setting:
            raise ConfigError(given, exc.message) from None
        raise
