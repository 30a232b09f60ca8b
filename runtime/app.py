"""Assemble a runnable service from :class:`~runtime.config.Settings`.

``build(settings)`` loads the handler and server classes, binds the server and
the admin port, and wires telemetry, logs and the lifecycle together;
``App.run()`` serves until a signal and returns the exit status.  Library code: failures
raise :class:`~runtime.config.ConfigError` (bad setting) or
:class:`StartupError` (the setting is fine but the machine says no, e.g. a
port in use); the CLI turns both into one line and exit status 2.
"""

from __future__ import annotations

import difflib
import errno
import functools
import importlib
import inspect
import os
import socket
import socketserver
import ssl
import sys
import sysconfig
import traceback
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple, Protocol

from . import servers
from ._catalog import EXAMPLES
from .admin import AdminServer
from .config import Address, ConfigError, Settings, parse_address, parse_addresses
from .lifecycle import Runtime, ServerUnit, Unit
from .prefork import Prefork, WorkerDirError
from .status import StatusBoard
from .telemetry import Telemetry
from .telemetry.logging import log_sink, make_logger, route_stdlib_logging

__all__ = ["App", "StartupError", "build", "load_object", "serve"]

DEFAULT_BIND = "127.0.0.1:9000"
_BASE_CLASSES: dict[str, type[socketserver.TCPServer]] = {
    "tcp": socketserver.TCPServer,
    "udp": socketserver.UDPServer,
    "unix": socketserver.UnixStreamServer,
    "unixgram": socketserver.UnixDatagramServer,
}


class StartupError(RuntimeError):
    """The service could not start (for a reason outside the settings' syntax)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


def load_object(spec: str, setting: str) -> Any:
    """Import ``module:attr`` (dots allowed in attr) and return that object.

    Whatever goes wrong raises :class:`ConfigError` naming *setting*, in one line, with
    the original exception as ``__cause__`` (its traceback, for whoever needs it): the
    module is not on ``sys.path``; importing it raised (its own code runs, so anything:
    an exception, a ``SyntaxError``, a module it imports that is missing, ``sys.exit()``;
    the line names the exception and the file and line it came from); it has no *attr*.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(setting, f"{spec!r} is not module:Class")
    if module_name.startswith("."):
        raise ConfigError(setting, f"{spec!r}: give the module's full name, not a relative one")
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # SystemExit: a module that parses sys.argv
        why = _import_failure(module_name, exc)
        raise ConfigError(setting, f"cannot import module {module_name!r}: {why}") from exc
    parts = attr.split(".")
    for depth, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            hint = _close_name(obj, part)
            hint = f" (did you mean {'.'.join([*parts[:depth], hint])!r}?)" if hint else ""
            raise ConfigError(setting, f"module {module_name!r} has no {attr!r}{hint}") from exc
        except Exception as exc:  # a module __getattr__ that imports on demand
            raise ConfigError(setting, f"cannot load {spec!r}: {_one_line(exc)}") from exc
    return obj


def _import_failure(module_name: str, exc: BaseException) -> str:
    """Why *module_name* did not import, in a few words."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing is not None and (module_name + ".").startswith(missing + "."):
        if "." in missing:  # its package is there
            return f"no module named {missing!r}"
        return (
            f"no module named {missing!r} on sys.path (run from the folder that holds it, "
            "or add that folder to PYTHONPATH)"
        )
    return _one_line(exc)  # the module was found, and its code (or an import in it) failed


_INSTALLED_PATHS = ("stdlib", "platstdlib", "purelib", "platlib")  # sysconfig's names


def _one_line(exc: BaseException) -> str:
    """``Type: text (file, line N)``: the exception, and where.

    A SyntaxError is where the bad code is.  Any other exception is at the innermost
    frame of the user's own code (outside the interpreter's and installed packages'
    folders: the line of theirs that raised, or called the library that did), else at
    the innermost frame that is neither importlib's nor this module's.
    """
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    path: str | None
    line: int | None
    if isinstance(exc, SyntaxError):
        text, path, line = exc.msg, exc.filename, exc.lineno
    else:
        text, path, line = str(exc), None, None
        frames = [
            frame for frame in traceback.extract_tb(exc.__traceback__)
            if frame.filename != __file__ and not frame.filename.startswith("<frozen ")
        ]  # fmt: skip
        installed = tuple(
            folder + os.sep
            for folder in {sysconfig.get_path(key) for key in _INSTALLED_PATHS}
            if folder
        )
        own = [frame for frame in frames if not frame.filename.startswith(installed)]
        for frame in (own or frames)[-1:]:
            path, line = frame.filename, frame.lineno
    text = " ".join(text.split())  # one line, whatever the exception says
    if len(text) > 200:
        text = text[:197] + "..."
    where = f" ({_shown_path(path)}, line {line})" if path and line else ""
    return f"{name}: {text}{where}" if text else f"{name}{where}"


def _shown_path(path: str) -> str:
    """*path* relative to the working folder when it is inside it (shorter), else as is."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _close_name(obj: Any, name: str) -> str | None:
    """The attribute of *obj* that *name* is most likely a typo of."""
    names = [n for n in dir(obj) if name.startswith("_") or not n.startswith("_")]
    close = difflib.get_close_matches(name, names, n=1)
    return close[0] if close else None


def _load_handler(spec: str) -> Any:
    """The request handler class *spec* names; ConfigError if it does not import or is none."""
    handler = load_object(spec, "HANDLER")
    what = _not_a_handler(handler)
    if what is not None:
        raise ConfigError(
            "HANDLER",
            f"{spec!r} is {what}, not a request handler class (a subclass of "
            "socketserver.BaseRequestHandler, or a functools.partial of one)",
        )
    return handler


def _not_a_handler(obj: Any) -> str | None:
    """What *obj* is, if it is not a request handler class; None if it is one.

    A request handler is a ``socketserver.BaseRequestHandler`` subclass (as every one in
    the standard library is: stream, datagram, ``http.server``'s, ``wsgiref``'s,
    ``xmlrpc.server``'s), or a ``functools.partial`` of one (``http.server``'s way to
    pass ``directory=``).  Anything else would most likely fail at every connection
    rather than at start-up (and a duck-typed class loses nothing by subclassing
    BaseRequestHandler); the usual slips (the server class, a module, a function, an
    instance) are named.
    """
    if isinstance(obj, functools.partial):
        inner = _not_a_handler(obj.func)
        return None if inner is None else f"a functools.partial of {inner}"
    if isinstance(obj, type):
        if issubclass(obj, socketserver.BaseRequestHandler):
            return None
        if issubclass(obj, socketserver.BaseServer):
            return "a server class (give it with --server)"
        return f"the class {obj.__qualname__}"
    if isinstance(obj, types.ModuleType):
        return "a module"
    if inspect.isroutine(obj):
        return "a function"
    return f"an instance of {type(obj).__qualname__}"


class Served(Unit, Protocol):
    """A unit as the admin port shows it, whatever the mode: its metrics, its status."""

    @property
    def telemetry(self) -> Telemetry | None:
        """The telemetry whose recent requests the status page lists (None: none kept)."""

    @property
    def families(self) -> Callable[[], Iterable[Any]] | None:
        """Without telemetry: where the status page reads the request counters."""

    @property
    def worker_rows(self) -> Callable[[], list[dict[str, Any]]] | None:
        """The status page's table of worker processes (None: no workers)."""

    def render_metrics(self, accept: str = "") -> tuple[bytes, str]: ...
    def keep_from_workers(self, descriptors: Any) -> None: ...


class _ServedServer(ServerUnit):
    """One server, as the admin port shows it: its telemetry's metrics and recent requests."""

    families = None
    worker_rows = None

    def __init__(self, server: Any, telemetry: Telemetry, **options: Any) -> None:
        super().__init__(server, **options)
        self.telemetry = telemetry

    def render_metrics(self, accept: str = "") -> tuple[bytes, str]:
        return self.telemetry.render(accept)

    def keep_from_workers(self, descriptors: Any) -> None:
        pass  # no workers


@dataclass
class App:
    """A bound, not yet serving, service."""

    settings: Settings
    server: Any
    telemetry: Telemetry
    runtime: Runtime
    admin: AdminServer | None
    addresses: list[Address]
    logger: Any
    tracer_provider: Any = None
    closed: bool = field(default=False)

    def run(
        self, on_serving: Callable[[], None] | None = None, *, received: Sequence[int] = ()
    ) -> int:
        """Serve until stopped; *on_serving* runs once the signal handlers are in place;
        *received*: signals that arrived while it started (see :meth:`Runtime.run`)."""
        if self.admin is not None:
            self.admin.start()
        try:
            return self.runtime.run(on_serving, received=received)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.admin is not None:
            self.admin.close()
        self.server.server_close()
        # A socket file the runtime made is removed; an inherited one is its owner's.
        for address in self.addresses:
            if address.transport in ("unix", "unixgram") and address.fd is None:
                try:
                    os.unlink(address.address)
                except OSError:
                    pass
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()

    def describe(self) -> str:
        listeners = self.server.listeners()
        where = ", ".join(
            _url(sock.getsockname(), address)
            for sock, address in zip(listeners, self.addresses, strict=False)
        )
        urls = [f"serving {self.settings.handler} on {where}"]
        if self.admin is not None:
            base = self.admin.url
            urls.append(f"admin {base}/  {base}/metrics  {base}/livez  {base}/readyz")
        return "\n".join(urls)


def _url(bound: Any, address: Address) -> str:
    """Where a listener listens, as bound (the port the kernel picked for port 0)."""
    inherited = f" (inherited, fd://{address.fd})" if address.fd is not None else ""
    if address.transport in ("unix", "unixgram"):
        return f"{address.transport}:{address.address}{inherited}"
    host, port = bound[:2]
    host = f"[{host}]" if ":" in str(host) else host
    return f"{address.transport}://{host}:{port}{inherited}"


def _server_class(settings: Settings, address: Address, default_server: str | None) -> type:
    spec = settings.server or default_server
    if spec is not None:
        base = load_object(spec, "--server")
        if not (isinstance(base, type) and issubclass(base, socketserver.BaseServer)):
            raise ConfigError("--server", f"{spec!r} is not a socketserver.BaseServer subclass")
    else:
        base = _BASE_CLASSES[address.transport]
    mode = settings.mode
    if mode == "prefork":  # each worker serves alone, or with a thread pool of its own
        mode = "thread" if settings.threads else "sync"
    cls = servers.instrument(base, mode)
    attrs: dict[str, Any] = {
        "allow_reuse_address": True,
        # The drain bounds the wait for requests in flight; a thread stuck past it must not
        # keep the process from exiting (the interpreter joins non-daemon threads at exit).
        "daemon_threads": True,
        **settings.options("server"),
    }
    if address.family == socket.AF_INET6:
        attrs["address_family"] = address.family
    if settings.certfile is not None:
        attrs["ssl_context"] = tls_context(settings)
    if settings.mode == "prefork":
        if settings.threads:
            attrs["max_children"] = settings.threads
    elif settings.max_children is not None:
        attrs["max_children"] = settings.max_children
    if settings.queue_size is not None:
        attrs["queue_size"] = settings.queue_size
    return type(cls.__name__, (cls,), attrs)


def _tracer_provider(settings: Settings, default_service: str) -> Any:
    """The traces the settings ask for, set up from the standard ``OTEL_*`` variables."""
    from .telemetry.otel import TracingSetupError, provider_from_environment

    try:
        return provider_from_environment(settings.traces, default_service)
    except TracingSetupError as exc:
        raise ConfigError(exc.setting, exc.message) from None


class Plan(NamedTuple):
    """What the settings resolve to before anything is bound (``--check-config``)."""

    settings: Settings
    handler_spec: str
    handler: Any
    handler_modules: list[str]
    addresses: list[Address]
    cls: type

    @property
    def address(self) -> Address:
        """The first address: the server's own socket (``server_address``)."""
        return self.addresses[0]

    def describe(self) -> str:
        s = self.settings
        admin = s.admin_address
        mode = s.mode + (f", {s.worker_count} workers" if s.mode == "prefork" else "")
        where = ", ".join(str(address) for address in self.addresses)
        return (
            f"{self.handler_spec} on {where} ({self.cls.__name__}, {mode}); "
            f"admin {admin if admin is not None else 'off'}"
        )


def check(settings: Settings) -> Plan:
    """Resolve the handler (imported), the address and the server class; bind nothing.

    Raises ConfigError naming the setting at fault.
    """
    example = EXAMPLES.get(settings.handler)
    if example is None and ":" not in settings.handler:
        names = ", ".join(sorted(EXAMPLES))
        raise ConfigError(
            "HANDLER", f"{settings.handler!r} is not module:Class nor an example ({names})"
        )
    handler_spec = example.handler if example else settings.handler
    before = set(sys.modules)
    handler = _load_handler(handler_spec)
    handler_modules = _project_modules(set(sys.modules) - before)
    if settings.bind:
        addresses = parse_addresses(settings.bind)
    else:
        addresses = [parse_address(example.bind if example else DEFAULT_BIND)]
    address = addresses[0]
    if address.transport not in ("tcp",) and settings.server is None and example and example.server:
        raise ConfigError("--bind", f"{settings.handler!r} needs a tcp address (host:port)")
    cls = _server_class(settings, address, example.server if example else None)
    if getattr(cls, "socket_type", None) != _BASE_CLASSES[address.transport].socket_type:
        raise ConfigError("--bind", f"{address} does not match the server class {cls.__name__}")
    settings.admin_address  # noqa: B018 - parsed: a bad --admin is a ConfigError here too
    return Plan(settings, handler_spec, handler, handler_modules, addresses, cls)


def build(settings: Settings, *, log_stream: IO[str] | None = None) -> App:
    """Load, bind and wire everything; raise ConfigError/StartupError on failure."""
    plan = check(settings)
    handler_spec, handler, handler_modules = plan.handler_spec, plan.handler, plan.handler_modules
    address, cls = plan.address, plan.cls
    more = plan.addresses[1:]

    logger = make_logger(level=settings.log_level, fmt=settings.log_format, stream=log_stream)
    route_stdlib_logging(level=settings.log_level, fmt=settings.log_format, stream=log_stream)
    label = settings.server_name or settings.handler.rpartition(":")[2]
    prefork = settings.mode == "prefork"
    # A pre-fork supervisor never serves: its workers build their own telemetry after the fork.
    provider = None if prefork else _tracer_provider(settings, label)
    telemetry = Telemetry(tracer_provider=provider, prefix=settings.metrics_prefix)
    sink = log_sink(logger)
    if sink is not None:  # count the lines a stuck log reader made us drop
        sink.on_drop = lambda n: telemetry.dropped("log_lines", n)
    if provider is not None:  # and the spans a hung collector made us drop
        provider.on_drop = lambda n: telemetry.dropped("spans", n)
    admin_address = settings.admin_address
    inherited = address.fd is not None
    try:
        server = cls(
            address.address,
            handler,
            bind_and_activate=not (settings.reuse_port or inherited or more),
            telemetry=None if prefork else telemetry,
            logger=logger,
            server_name=label,
        )
        if inherited:
            _serve_inherited(server, address)
        elif settings.reuse_port:  # reserve the port; each worker listens on its own socket
            server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            server.server_bind()
        elif more:  # [::]:N beside 0.0.0.0:N: each IPv6 listener takes IPv6 only
            _v6_only(server.socket)
            server.server_bind()
            server.server_activate()
    except OSError as exc:
        raise StartupError("--bind", f"{address}: {_os_reason(exc)}") from None
    for extra in more:
        try:
            server.add_listener(_listener(server, extra))
        except OSError as exc:
            server.server_close()
            raise StartupError("--bind", f"{extra}: {_os_reason(exc)}") from None
        except ValueError as exc:  # a server class that serves one address
            server.server_close()
            raise ConfigError("--bind", str(exc)) from None
    admin = None
    unit: Served
    reload_tls = None
    if settings.certfile is not None:  # SIGHUP: new handshakes take the files as they are now

        def reload_tls() -> None:
            server.ssl_context = tls_context(settings)

    if prefork:
        pool = _prefork(settings, server, logger, label, handler_spec, handler_modules)
        if sink is not None:  # the supervisor's own lines, on its /metrics
            sink.on_drop = pool.count_dropped_log_lines
        pool.on_reload = reload_tls
        unit = pool
    else:
        unit = _ServedServer(server, telemetry, reload=reload_tls, **settings.options("unit"))
    runtime = Runtime(unit, logger=logger, **settings.options("engine"))
    if admin_address is not None:
        try:
            status = StatusBoard(
                runtime.lifecycle, [unit], unit.telemetry, families=unit.families,
                prefix=settings.metrics_prefix, workers=unit.worker_rows,
            )  # fmt: skip
            admin = AdminServer(
                admin_address.address,
                lifecycle=runtime.lifecycle,
                render_metrics=unit.render_metrics,
                status=status,
                logger=logger,
            )
            unit.keep_from_workers(admin.descriptors)
        except OSError as exc:
            server.server_close()
            raise StartupError("--admin", f"{admin_address}: {_os_reason(exc)}") from None
    return App(settings, server, telemetry, runtime, admin, plan.addresses, logger, provider)


def tls_context(settings: Settings, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """The server's TLS context from the settings (or *context* loaded again: SIGHUP).

    TLS 1.2 and up, the standard library's default ciphers; client certificates as
    ``--cert-reqs`` says, checked against ``--ca-certs``.  A file that is missing or not
    PEM is a ConfigError naming its flag.
    """
    assert settings.certfile is not None
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = {
            "none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED,
        }[settings.cert_reqs]  # fmt: skip
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        name = "--keyfile" if settings.keyfile and _names_key(exc) else "--certfile"
        raise ConfigError(
            name, f"cannot load the certificate and key: {_tls_reason(exc)}"
        ) from None
    if settings.ca_certs is not None:
        try:
            context.load_verify_locations(settings.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("--ca-certs", f"cannot load: {_tls_reason(exc)}") from None
    return context


def _names_key(exc: BaseException) -> bool:
    return "KEY" in str(getattr(exc, "reason", "") or "").upper()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


def _v6_only(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def _listener(server: Any, address: Address) -> socket.socket:
    """Another listening socket for *server* (``--bind`` given more than once): bound as
    the server's class binds its own (``allow_reuse_address``), or inherited."""
    if address.fd is not None:
        inherited = _InheritedSocket(fileno=address.fd)
        _forget_listen_fds()
        return inherited
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        if server.allow_reuse_address and address.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _v6_only(sock)
        sock.bind(address.address)
        sock.listen(server.request_queue_size)
    except OSError:
        sock.close()
        raise
    return sock


class _InheritedSocket(socket.socket):
    """A socket passed in, bound and listening already: the server's bind is a no-op."""

    def bind(self, address: Any) -> None:
        pass


def _serve_inherited(server: Any, address: Address) -> None:
    """Serve the listening socket this process inherited (``fd://N``, systemd's LISTEN_FDS).

    The server's own bind and activate still run (``http.server`` learns its name there),
    on a socket whose bind does nothing; listen() again only sets the backlog.  The
    LISTEN_* variables are then removed, as sd_listen_fds() does, so that no child
    (a pre-fork worker, a handler's subprocess) takes them as its own.
    """
    assert address.fd is not None
    server.socket.close()
    server.socket = _InheritedSocket(fileno=address.fd)
    server.server_address = server.socket.getsockname()
    server.server_bind()
    server.server_activate()
    _forget_listen_fds()


def _forget_listen_fds() -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)


def _prefork(
    settings: Settings,
    server: Any,
    logger: Any,
    label: str,
    handler_spec: str,
    handler_modules: list[str],
) -> Prefork:
    def make_telemetry(_slot: int) -> Telemetry:
        provider = _tracer_provider(settings, label)  # its own service.instance.id
        telemetry = Telemetry(tracer_provider=provider, prefix=settings.metrics_prefix, worker=True)
        sink = log_sink(logger)
        if sink is not None:  # the worker's own drops, in its own metrics
            sink.on_drop = lambda n: telemetry.dropped("log_lines", n)
        if provider is not None:
            provider.on_drop = lambda n: telemetry.dropped("spans", n)
        return telemetry

    def reload() -> Any:
        """The handler, imported again from its files (SIGHUP)."""
        for name in handler_modules:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return _load_handler(handler_spec)  # not a handler any more: the new workers fail to boot

    try:
        return Prefork(
            server,
            workers=settings.worker_count,
            logger=logger,
            make_telemetry=make_telemetry,
            reload=reload,
            **settings.options("pool"),
        )
    except WorkerDirError as exc:
        server.server_close()
        raise StartupError("--worker-tmp-dir", _worker_dir_message(settings, exc)) from None


def _worker_dir_message(settings: Settings, exc: WorkerDirError) -> str:
    """Where the pre-fork folder could not go, and what to do about it."""
    if exc.folder is None:
        where = "no writable temporary folder ($TMPDIR, /tmp, /var/tmp, /usr/tmp, the working one)"
    else:
        where = f"cannot make the pre-fork folder in {exc.folder} ({exc.reason})"
    if settings.worker_tmp_dir is None:
        volume = exc.folder or "/tmp"
        fix = f"mount a writable volume on {volume} (an emptyDir) or set --worker-tmp-dir"
    else:
        fix = "set --worker-tmp-dir"
    return f"{where}; {fix} (RUNTIME_WORKER_TMP_DIR) to a writable folder, e.g. /dev/shm"


def _project_modules(names: set[str]) -> list[str]:
    """Of *names*, the modules loaded from outside the interpreter's and packages' folders."""
    installed = {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    found = []
    for name in names:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and not any(path.startswith(folder) for folder in installed if folder):
            found.append(name)
    return sorted(found)


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there; pick another port)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


def serve(server: Any, *, admin: tuple[str, int] | None = None, **options: Any) -> int:
    """Run *server* with signals, a graceful drain and (given *admin*) the admin port.

    Blocks until stopped (SIGTERM/SIGINT, or ``Runtime.stop``) and returns the
    exit status: 0 if nothing was forced, else 1.  *options* are
    :class:`Runtime`'s keyword arguments (``drain_delay``, ``graceful_timeout``,
    ...).  ``/metrics`` renders the server's :class:`Telemetry`, if it has one.
    """
    rt = Runtime(server, **options)
    port = None
    if admin is not None:
        telemetry = server.telemetry if isinstance(server.telemetry, Telemetry) else None
        render = telemetry.render if telemetry is not None else _no_metrics
        board = StatusBoard(rt.lifecycle, [server], telemetry)
        port = AdminServer(admin, lifecycle=rt.lifecycle, render_metrics=render, status=board)
        port.start()
    try:
        return rt.run()
    finally:
        if port is not None:
            port.close()


def _no_metrics(_accept: str) -> tuple[bytes, str]:
    return b"# no telemetry configured for this server\n", "text/plain; version=0.0.4"
