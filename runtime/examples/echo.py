"""TCP line echo: every line the client sends comes back unchanged.

Send ``fail`` to see a handler error handled (logged, counted, the server
keeps serving), ``slow`` to hold the connection for a second.
"""

from __future__ import annotations

import socketserver
import time


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            command = line.strip()
            if command == b"fail":
                raise ValueError("the client asked for a failure")
            if command == b"slow":
                time.sleep(1.0)
            self.wfile.write(line)
