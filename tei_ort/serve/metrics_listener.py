"""The separate Prometheus listener on --prometheus-port (TEI's default 9000): GET on any path
answers the same exposition as /metrics on the main port.

A stdlib HTTP server in a daemon thread: scrapes never wait behind inference requests on the event
loop, and a busy event loop never delays a scrape. The metrics it reads are thread-safe
(prometheus-client's locks; the engine's stats are plain integer reads)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tei_ort.serve.metrics import CONTENT_TYPE

logger = logging.getLogger(__name__)


class MetricsListener:
    def __init__(self, exposition: Callable[[], bytes]) -> None:
        self._exposition = exposition
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def start(self, host: str, port: int) -> None:
        """Listen; a port already taken is logged, not fatal: /metrics on the main port still
        answers, and a second server on one machine should not fail for its metrics port."""
        exposition = self._exposition

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("metrics listener: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            logger.warning("Prometheus listener not started on %s:%d: %s", host, port, exc)
            return
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tei-metrics", daemon=True
        )
        self._thread.start()
        logger.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
