"""Request handlers that ``prefork_servers.py`` gives the runtime's command line (``module:Class``).

Loaded by the pre-fork supervisor and again by each worker (``bench/`` is on
``PYTHONPATH``), never by the baselines.

- ``HelloCloseHandler``: the ``http_hello`` example (``runtime/examples/http_hello.py``)
  answering ``Connection: close``, one request per connection, as gunicorn's sync
  worker does.  A sync worker serves one connection at a time, so with keep-alive
  it would serve wrk's first two connections for the whole run and the other 62
  would wait in the accept queue, unanswered (see bench/README.md).
- ``UpperHandler``: the line-echo handler every server of ``echo_servers.py`` uses
  (the load generator checks the upper-cased reply; the ``echo`` example echoes
  unchanged).
"""

from __future__ import annotations

from echo_servers import UpperHandler

from runtime.examples.http_hello import HelloHandler

__all__ = ["HelloCloseHandler", "UpperHandler"]


class HelloCloseHandler(HelloHandler):
    """``http_hello``, closing the connection after each response."""

    def end_headers(self) -> None:
        self.send_header("Connection", "close")  # also sets close_connection
        super().end_headers()
