"""A handler module whose import waits: so a test can signal the runtime mid-start-up.

At import it creates ``$SLOW_START_DIR/importing`` and then waits (at most 30 s) until
``$SLOW_START_DIR/go`` exists.  ``python -m runtime slow_start:EchoHandler`` imports it
while it starts, before it serves.
"""

from __future__ import annotations

import os
import socketserver
import time
from pathlib import Path

_folder = os.environ.get("SLOW_START_DIR")
if _folder:
    (Path(_folder) / "importing").touch()
    _deadline = time.monotonic() + 30
    while not (Path(_folder) / "go").exists() and time.monotonic() < _deadline:
        time.sleep(0.01)


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)
