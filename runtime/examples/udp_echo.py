"""UDP echo: every datagram comes back to its sender."""

from __future__ import annotations

import socketserver


class UDPEchoHandler(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())
