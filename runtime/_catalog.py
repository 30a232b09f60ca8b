"""The bundled example services (``runtime/examples/``), by name: ``python -m runtime echo``."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EXAMPLES", "Example"]


class Example(NamedTuple):
    handler: str  # module:Class
    bind: str  # default address
    server: str | None = None  # module:Class of the server, None: from the address


EXAMPLES = {
    "echo": Example("runtime.examples.echo:EchoHandler", "127.0.0.1:9000"),
    "udp_echo": Example("runtime.examples.udp_echo:UDPEchoHandler", "udp://127.0.0.1:9000"),
    "http_hello": Example(
        "runtime.examples.http_hello:HelloHandler", "127.0.0.1:8000", "http.server:HTTPServer"
    ),
}
