"""Settings: one frozen, keyword-only object, filled from defaults, then
``RUNTIME_*`` environment variables, then command-line flags.

Every invalid value raises :class:`ConfigError` naming the setting (as its
flag) and the fix; only the CLI turns that into a message and exit status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .telemetry.logging import FORMATS, LEVELS

__all__ = ["Address", "ConfigError", "Settings", "parse_address", "settings_from"]

MODES = ("sync", "thread", "fork", "prefork")
OVERLOAD = ("wait", "reject")
TRACES = ("none", "console", "otlp")


class ConfigError(ValueError):
    """A setting has a value the runtime cannot use."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


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
        if self.max_children is not None and self.max_children < 1:
            raise ConfigError("--max-children", f"must be at least 1, got {self.max_children}")
        prefork = {
            "workers": self.workers is not None, "threads": self.threads != 0,
            "max_requests": self.max_requests != 0, "reuse_port": self.reuse_port,
        }  # fmt: skip
        for name, given in prefork.items():
            if given and self.mode != "prefork":
                raise ConfigError(_flag(name), "applies to --mode prefork only")
        for name, least in (("workers", 1), ("threads", 0), ("min_workers", 1),
                            ("max_requests", 0), ("max_requests_jitter", 0)):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigError(_flag(name), f"must be at least {least}, got {value}")
        if self.worker_timeout < 0:
            raise ConfigError(
                "--worker-timeout", f"must be 0 (off) or more seconds, got {self.worker_timeout}"
            )
        if (self.mode == "prefork" and self.max_children is not None
                and self.max_children < self.worker_count):  # fmt: skip
            raise ConfigError(
                "--max-children",
                f"{self.max_children} is below --workers {self.worker_count} (it caps workers)",
            )
        if self.queue_size is not None and self.queue_size < 0:
            raise ConfigError("--queue-size", f"must be 0 or more, got {self.queue_size}")
        if self.backlog < 1:
            raise ConfigError("--backlog", f"must be at least 1, got {self.backlog}")
        for name in ("drain_delay", "graceful_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    _flag(name), f"must be 0 or more seconds, got {getattr(self, name)}"
                )
        for name in ("request_warn_after", "request_timeout", "connection_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(
                    _flag(name), f"must be more than 0 seconds (or none), got {value}"
                )
        for name in ("liveness_timeout", "poll_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    _flag(name), f"must be more than 0 seconds, got {getattr(self, name)}"
                )
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


def _convert(name: str, raw: str, source: str) -> Any:
    kind = str(_FIELDS[name].type)
    if raw.strip().lower() in ("", "none") and "None" in kind:
        return None
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            value = raw.strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        what = kind.split(" ")[0]
        raise ConfigError(source, f"{raw!r} is not a valid {what}") from None
    return raw


# Kubernetes injects these for a Service named "runtime" (service links); never settings.
_SERVICE_LINK = re.compile(
    r"RUNTIME_(SERVICE_(HOST|PORT)(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)$"
)


def settings_from(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults, then ``RUNTIME_*`` variables from *environ*, then *overrides* (the flags
    that were given; a None value there means "none", e.g. ``--request-timeout none``).

    Raises :class:`ConfigError` for unknown ``RUNTIME_*`` variables too, so a
    typo never passes silently.
    """
    values: dict[str, Any] = {}
    for key, raw in (environ or {}).items():
        if not key.startswith("RUNTIME_") or _SERVICE_LINK.match(key):
            continue
        name = key[len("RUNTIME_") :].lower()
        if name not in _FIELDS:
            known = ", ".join("RUNTIME_" + n.upper() for n in _FIELDS)
            raise ConfigError(key, f"unknown setting; known: {known}")
        values[name] = _convert(name, raw, key)
    # The standard OpenTelemetry variable chooses the exporter unless RUNTIME_TRACES
    # or --traces do (the rest of OTEL_* is read by the SDK and the exporter).
    otel = (environ or {}).get("OTEL_TRACES_EXPORTER")
    if otel is not None and "traces" not in values:
        otel = otel.strip().lower()
        if otel not in TRACES:
            raise ConfigError("OTEL_TRACES_EXPORTER", f"{otel!r} is not one of {', '.join(TRACES)}")
        values["traces"] = otel
    values.update(overrides or {})  # flags given explicitly, None included ("none")
    return Settings(**values)
