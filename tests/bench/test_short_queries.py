"""`make bench`'s short-query overhead: the raw runtime and the server measured query by query,
alternating, against a stand-in HTTP server that records what reaches it."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tei_ort.bench import server


@pytest.fixture
def stand_in() -> Iterator[tuple[server.Server, list[tuple[str, str]]]]:
    events: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            events.append(("server", body["inputs"]))
            status = 422 if body["inputs"] == "refused" else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    process: subprocess.Popen[bytes] = subprocess.Popen(["true"])
    process.wait()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield server.Server(process, url, 0.0), events
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_raw_and_server_alternate_query_by_query(
    stand_in: tuple[server.Server, list[tuple[str, str]]],
) -> None:
    srv, events = stand_in
    texts, counts = ["one", "two", "three"], [3, 4, 5]
    served, raw = server.short_queries(
        srv, lambda text: events.append(("raw", text)), texts, counts, rounds=2
    )
    assert events == [(side, t) for t in texts * 2 for side in ("raw", "server")]
    assert (served.name, served.group, served.texts, served.tokens, served.errors) == (
        "server short query c=1 x1",
        "server",
        6,
        24,
        0,
    )
    assert (raw.name, raw.group, raw.texts, raw.tokens) == (
        "raw short query (1 at a time)",
        "raw",
        6,
        24,
    )
    assert len(served.latencies_s) == len(raw.latencies_s) == 6
    assert served.concurrency == served.texts_per_request == 1


def test_a_refused_query_is_an_error_not_a_latency(
    stand_in: tuple[server.Server, list[tuple[str, str]]],
) -> None:
    srv, _ = stand_in
    served, raw = server.short_queries(srv, lambda text: None, ["ok", "refused"], [2, 2], rounds=1)
    assert (served.errors, len(served.latencies_s), len(raw.latencies_s)) == (1, 1, 2)
