"""Every ``socketserver`` server class, instrumented and bounded.

Each class subclasses its standard namesake (so ``isinstance(server,
socketserver.ThreadingTCPServer)`` holds), keeps its constructor signature
and class variables, and adds the hook chain of :mod:`runtime.server` and the
bounded pools of :mod:`runtime.pools`.  :func:`instrument` does the same for
any other ``socketserver.BaseServer`` subclass, such as
``http.server.HTTPServer``.
"""

from __future__ import annotations

import socketserver

from .pools import ForkingMixIn, ThreadingMixIn
from .server import InstrumentedMixIn

__all__ = [
    "MODES",
    "BaseServer",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "TCPServer",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "ThreadingUnixDatagramServer",
    "ThreadingUnixStreamServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
    "instrument",
]

MODES = ("sync", "thread", "fork")


class BaseServer(InstrumentedMixIn, socketserver.BaseServer):
    __doc__ = socketserver.BaseServer.__doc__


class TCPServer(InstrumentedMixIn, socketserver.TCPServer):
    __doc__ = socketserver.TCPServer.__doc__


class UDPServer(InstrumentedMixIn, socketserver.UDPServer):
    __doc__ = socketserver.UDPServer.__doc__


class UnixStreamServer(InstrumentedMixIn, socketserver.UnixStreamServer):
    pass


class UnixDatagramServer(InstrumentedMixIn, socketserver.UnixDatagramServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer, socketserver.ThreadingTCPServer):
    pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer, socketserver.ThreadingUDPServer):
    pass


class ThreadingUnixStreamServer(
    ThreadingMixIn, UnixStreamServer, socketserver.ThreadingUnixStreamServer
):
    pass


class ThreadingUnixDatagramServer(
    ThreadingMixIn, UnixDatagramServer, socketserver.ThreadingUnixDatagramServer
):
    pass


class ForkingTCPServer(ForkingMixIn, TCPServer, socketserver.ForkingTCPServer):
    pass


class ForkingUDPServer(ForkingMixIn, UDPServer, socketserver.ForkingUDPServer):
    pass


# The standard library has these from Python 3.12 on; subclass them where they exist.
_std_fus: type = getattr(socketserver, "ForkingUnixStreamServer", object)
_std_fud: type = getattr(socketserver, "ForkingUnixDatagramServer", object)


class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer, _std_fus):  # type: ignore[misc]
    pass


class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer, _std_fud):  # type: ignore[misc]
    pass


_cache: dict[tuple[type, str | None], type] = {}


def instrument(server_class: type, mode: str | None = None) -> type:
    """Return *server_class* with every hook measured, as a subclass of it.

    *mode*: ``None`` keeps the class's own concurrency (a standard
    ``ThreadingMixIn`` or ``ForkingMixIn`` in it is replaced by the bounded
    pool of the same kind); ``"sync"``, ``"thread"`` or ``"fork"`` choose.
    Classes already instrumented come back unchanged when *mode* is None.
    The result is cached, so calling twice gives the same class.
    """
    if not (isinstance(server_class, type) and issubclass(server_class, socketserver.BaseServer)):
        raise TypeError(f"{server_class!r} is not a socketserver.BaseServer subclass")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    key = (server_class, mode)
    if key in _cache:
        return _cache[key]
    if mode is None:
        if issubclass(server_class, socketserver.ThreadingMixIn):
            mode = "thread"
        elif issubclass(server_class, socketserver.ForkingMixIn):
            mode = "fork"
        else:
            mode = "sync"
    pool: dict[str, tuple[type, ...]] = {
        "sync": (),
        "thread": (ThreadingMixIn,),
        "fork": (ForkingMixIn,),
    }
    already = issubclass(server_class, InstrumentedMixIn)
    pooled = issubclass(server_class, pool[mode]) if pool[mode] else True
    if already and pooled:
        result = server_class
    else:
        bases = pool[mode] if not pooled else ()
        if not already:
            bases += (InstrumentedMixIn,)
        result = type(
            server_class.__name__,
            (*bases, server_class),
            {"__module__": server_class.__module__, "__qualname__": server_class.__qualname__,
             "__doc__": server_class.__doc__},
        )  # fmt: skip
    _cache[key] = result
    return result
