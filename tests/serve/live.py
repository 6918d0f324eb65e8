"""A real server on a loopback socket: the Sanic app runs in its own thread and event loop, the
tests talk to it over TCP with real HTTP clients."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import httpx
from sanic import Sanic

from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.engine_api import EngineAPI
from tei_ort.serve.operations import ServeContext
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.telemetry import Telemetry
from tests.conftest import REPO

PAYLOAD_LIMIT = 64 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def context(engine: EngineAPI, **overrides: object) -> ServeContext:
    values: dict[str, object] = {
        "engine": engine,
        "model_id": "fake/model",
        "served_model_name": "fake-model",
        "revision": None,
        "dtype": "float32",
        "version": "test",
        "created": 1700000000,
    }
    values.update(overrides)
    return ServeContext(**values)  # type: ignore[arg-type]


@contextmanager
def serve(
    ctx: ServeContext | ModelRegistry,
    *,
    api_key: str | None = None,
    origins: tuple[str, ...] = (),
    payload_limit: int = PAYLOAD_LIMIT,
    telemetry: Telemetry | None = None,
) -> Iterator[str]:
    """Yields the base URL; stops the server (and the engine) on exit."""
    app = create_app(
        ctx, payload_limit=payload_limit, access=AccessPolicy(api_key, origins), telemetry=telemetry
    )
    with serve_app(app) as url:
        yield url


@contextmanager
def serve_app(app: Sanic) -> Iterator[str]:  # type: ignore[type-arg]
    """Any built app (create_app's, or cli.build's) on a loopback port, started and stopped with
    its engine. Yields the base URL."""
    # Sanic's TouchUp rewrites its HTTP class in place, once per process: a second app would fail.
    app.config.TOUCHUP = False
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        server = await app.create_server(
            host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        ready.set()
        await stop.wait()
        await server.before_stop()
        await server.close()
        # Keep-alive connections outlive the listening socket: close them, as Sanic's runner does.
        for connection in list(server.connections):
            connection.close_if_idle()
        for _ in range(50):
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        for connection in list(server.connections):
            connection.abort()
        await server.after_stop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"sanic-{port}", daemon=True)
    thread.start()
    if not ready.wait(30) or failure:
        raise RuntimeError(f"server did not start: {failure}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@contextmanager
def tei_serve(
    env: Mapping[str, str | None], module: str = "tei_ort.serve", timeout_s: float = 300
) -> Iterator[tuple[str, list[str]]]:
    """`python -m <module>` as a user starts it, configured by environment variables (`env` over
    this process's; None removes one), on a free loopback port without the metrics listener.
    Yields its URL and, once SIGTERM has stopped it (with exit status 0), its output lines."""
    port = free_port()
    merged = {**os.environ, "PORT": str(port), "PROMETHEUS_PORT": "0", "PYTHONPATH": str(REPO)}
    merged.update({k: v for k, v in env.items() if v is not None})
    for name in [k for k, v in env.items() if v is None]:
        merged.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        env=merged,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    output: list[str] = []
    try:
        _wait_healthy(url, process, timeout_s)
        yield url, output
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        output += out.splitlines()
    assert process.returncode == 0, out


def _wait_healthy(url: str, process: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"tei-serve exited: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("tei-serve did not become healthy")
