"""TCP line echo: every line the client sends comes back unchanged.

Send ``fail`` to see a handler error handled (logged, counted, the server
keeps serving), ``slow`` to hold the connection for a second.

It shows the two things a line protocol tells the runtime:

- ``request_head_end = b"\\n"``: the client speaks first, one line at a time, so
  a connection gets a worker only once its first line has arrived (a client
  that trickles bytes waits in the serving loop, and is closed after
  ``--header-timeout``, without holding a thread);
- ``handle_drain()``: when the server drains, stop reading; the lines already
  sent are still echoed, then the connection closes (an idle client does not
  hold the drain until ``--graceful-timeout``).
"""

from __future__ import annotations

import socket
import socketserver
import time


class EchoHandler(socketserver.StreamRequestHandler):
    request_head_end = b"\n"

    def handle(self) -> None:
        for line in self.rfile:
            command = line.strip()
            if command == b"fail":
                raise ValueError("the client asked for a failure")
            if command == b"slow":
                time.sleep(1.0)
            self.wfile.write(line)

    def handle_drain(self) -> None:
        try:
            self.request.shutdown(socket.SHUT_RD)  # what was sent is still read, then EOF
        except OSError:
            pass  # the client is gone already
