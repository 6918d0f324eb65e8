"""The live server, end to end: start `tei-serve` on loopback, then closed-loop load from aiohttp
clients (each sends its next request when the last one is answered). The load generator shares the
machine's cores with the server, as it would on a 2-core box; its cost is part of what is measured."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import aiohttp

from tei_ort.bench.measure import Measurement


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, ready_s: float) -> None:
        self.process = process
        self.url = url
        self.ready_s = ready_s
        self.peak_rss = 0

    def sample_rss(self) -> int:
        rss = _rss_bytes(self.process.pid)
        self.peak_rss = max(self.peak_rss, rss)
        return rss


@contextmanager
def running_server(
    package: Path, extra_args: Sequence[str], log: Path, root: Path | None = None
) -> Iterator[Server]:
    """tei-serve on loopback until the block ends. `root`: run the server from that source tree
    (`python -m tei_ort.serve` with it on the path; builds compared side by side) rather than the
    installed command."""
    port = _free_port()
    script = Path(sys.executable).parent / "tei-serve"
    # The installed command; `python -m tei_ort.serve` where the package is only on the path.
    use_script = script.is_file() and root is None
    launcher = [str(script)] if use_script else [sys.executable, "-m", "tei_ort.serve"]
    command = [
        *launcher,
        "--model-id",
        str(package),
        "--hostname",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    env = {**os.environ, "PYTHONPATH": str(root.resolve())} if root is not None else None
    start = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
        try:
            url = f"http://127.0.0.1:{port}"
            ready_s = asyncio.run(_wait_ready(url, process, start))
            yield Server(process, url, ready_s)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


async def _wait_ready(url: str, process: subprocess.Popen[bytes], start: float) -> float:
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - start < 300:
            if process.poll() is not None:
                raise RuntimeError(f"tei-serve exited with {process.returncode}; see its log")
            try:
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError("tei-serve was not ready in 300 s")


def load(
    server: Server,
    texts: Sequence[str],
    token_counts: Sequence[int],
    concurrency: int,
    texts_per_request: int,
    duration_s: float,
    name: str | None = None,
) -> Measurement:
    return asyncio.run(
        _load(server, texts, token_counts, concurrency, texts_per_request, duration_s, name)
    )


async def _load(
    server: Server,
    texts: Sequence[str],
    token_counts: Sequence[int],
    concurrency: int,
    texts_per_request: int,
    duration_s: float,
    name: str | None,
) -> Measurement:
    starts = itertools.count(0, texts_per_request)
    latencies: list[float] = []
    done = {"texts": 0, "tokens": 0, "errors": 0}
    deadline = time.perf_counter() + duration_s
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            first = next(starts) % len(texts)
            indices = [(first + k) % len(texts) for k in range(texts_per_request)]
            body = {"inputs": [texts[i] for i in indices]}
            sent = time.perf_counter()
            async with session.post(server.url + "/embed", json=body) as response:
                await response.read()
                ok = response.status == 200
            if ok:
                latencies.append(time.perf_counter() - sent)
                done["texts"] += len(indices)
                done["tokens"] += sum(token_counts[i] for i in indices)
            else:
                done["errors"] += 1

    async def sample_memory() -> None:
        while time.perf_counter() < deadline:
            server.sample_rss()
            await asyncio.sleep(0.5)

    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(sample_memory(), *(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    return Measurement(
        name or f"server c={concurrency} x{texts_per_request}",
        "server",
        done["texts"],
        done["tokens"],
        seconds,
        latencies,
        concurrency=concurrency,
        texts_per_request=texts_per_request,
        errors=done["errors"],
    )


def short_queries(
    server: Server,
    raw: Callable[[str], object],
    texts: Sequence[str],
    token_counts: Sequence[int],
    rounds: int = 3,
) -> tuple[Measurement, Measurement]:
    """One short query at a time through the server and on the raw runtime (`raw`: tokenize +
    forward in this process), alternating query by query, `rounds` passes over `texts`: the
    machine's drift (other tenants, clocks) hits both alike, so the difference is the server's
    overhead. Returns (server, raw)."""
    return asyncio.run(_short_queries(server, raw, texts, token_counts, rounds))


async def _short_queries(
    server: Server,
    raw: Callable[[str], object],
    texts: Sequence[str],
    token_counts: Sequence[int],
    rounds: int,
) -> tuple[Measurement, Measurement]:
    served: list[float] = []
    direct: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for text in texts:
                started = time.perf_counter()
                raw(text)
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                async with session.post(server.url + "/embed", json={"inputs": text}) as response:
                    await response.read()
                    ok = response.status == 200
                if ok:
                    served.append(time.perf_counter() - started)
                else:
                    errors += 1
    tokens = sum(token_counts) * rounds
    return (
        Measurement(
            "server short query c=1 x1",
            "server",
            len(served),
            tokens,
            sum(served),
            served,
            concurrency=1,
            texts_per_request=1,
            errors=errors,
        ),
        Measurement(
            "raw short query (1 at a time)", "raw", len(direct), tokens, sum(direct), direct
        ),
    )
