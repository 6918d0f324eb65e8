"""Back-pressure and lifecycle, on the real engine over a slow fake model: a burst of 10x the
admission limit gets only 200s (each correct) and fast 429s; a runtime failure shows in /health
and clears; a client that goes away has its work dropped, others unaffected; the server listens
only once warmed up; SIGTERM under load answers every accepted request and exits 0."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tei_ort.engine import Engine, EngineConfig
from tei_ort.package import Task
from tests.conftest import REPO
from tests.serve import expected
from tests.serve.fake_server import READY, WARMING_UP
from tests.serve.fakes import FakeModel, SlowModel
from tests.serve.live import context, free_port, serve
from tests.serve.scrape import scrape, value

LIMIT = 4


def _engine(model: SlowModel, **config: object) -> Engine:
    return Engine(model, EngineConfig(max_client_batch_size=8, **config))  # type: ignore[arg-type]


def test_burst_of_ten_times_the_limit(fake_models: dict[Task, FakeModel]) -> None:
    model = SlowModel(forward_s=0.2)  # the admitted ones are still running when the rest arrive
    texts = [f"request number {i}" for i in range(10 * LIMIT)]

    async def burst(url: str) -> list[tuple[int, object, float]]:
        limits = httpx.Limits(max_connections=len(texts))
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

            async def one(text: str) -> tuple[int, object, float]:
                started = time.perf_counter()
                r = await client.post("/embed", json={"inputs": text})
                return r.status_code, r.json(), time.perf_counter() - started

            return await asyncio.gather(*(one(t) for t in texts))

    with serve(context(_engine(model, max_concurrent_requests=LIMIT))) as url:
        results = asyncio.run(burst(url))
        with httpx.Client(base_url=url) as client:
            samples = scrape(client)
            assert client.get("/health").status_code == 200
            assert client.post("/embed", json={"inputs": "after"}).status_code == 200
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= LIMIT and statuses.count(429) >= 1
    for text, (status, body, seconds) in zip(texts, results, strict=True):
        if status == 200:
            np.testing.assert_allclose(body, expected.embeddings(model, [text]), atol=1e-6)
        else:
            assert body == {"error": "Model is overloaded", "error_type": "Overloaded"}
            assert seconds < 1.0  # refused at once, not after queueing
    assert value(samples, "te_request_failure", err="overloaded") == statuses.count(429)
    assert value(samples, "te_request_success", method="single") == statuses.count(200)


def test_runtime_failure_shows_in_health_and_clears() -> None:
    model = SlowModel(forward_s=0.0)
    with serve(context(_engine(model))) as url, httpx.Client(base_url=url) as client:
        assert client.get("/health").status_code == 200
        model.failing = True
        failed = client.post("/embed", json={"inputs": "a"})
        assert failed.status_code == 424 and failed.json()["error_type"] == "Backend"
        assert "device" not in failed.text or "forward" in failed.text
        assert client.get("/health").status_code == 503
        assert client.get("/health").json()["error_type"] == "Unhealthy"
        model.failing = False  # the runtime recovers: the next health check's probe succeeds
        assert client.get("/health").status_code == 200
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
        assert value(scrape(client), "te_request_failure", err="inference") == 1


def test_client_going_away_drops_its_work() -> None:
    model = SlowModel(forward_s=0.1)
    engine = _engine(model, max_batch_requests=1)
    body = b'{"inputs": ["a1", "a2", "a3", "a4", "a5", "a6"]}'
    with serve(context(engine)) as url, httpx.Client(base_url=url, timeout=30) as client:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as leaving:
            leaving.sendall(
                b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            time.sleep(0.15)  # one or two of its six forwards have begun
        staying = client.post("/embed", json={"inputs": ["b"]})
        assert staying.status_code == 200
        np.testing.assert_allclose(staying.json(), expected.embeddings(model, ["b"]), atol=1e-6)
        time.sleep(0.3)
        samples = scrape(client)
        stats = engine.stats()
    # Warm-up (1) + "b" (1) + at most the leaving request's forwards begun before it left.
    assert model.inputs_run <= 1 + 1 + 3, model.inputs_run
    assert stats.dropped_inputs_total >= 3
    assert value(samples, "te_request_failure", err="dropped") == 1


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], marker: str, seen: list[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"no {marker!r} in {''.join(seen)}")


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("in_flight", [12])
def test_listens_after_warm_up_and_drains_on_sigterm(in_flight: int) -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.serve.fake_server", "--port", str(port)]
    # One request per 0.5 s forward: the 12 take 6 s to answer, far longer than they take to
    # arrive from 12 threads on a busy 2-core machine, so all of them are in flight at SIGTERM.
    command += ["--warm-up-s", "1.5", "--forward-s", "0.5", "--max-batch-requests", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, seen = _lines(process), []
    try:
        _wait_for(lines, WARMING_UP, seen)
        assert _refuses(port)  # the model is warming up: nothing listens yet
        _wait_for(lines, READY, seen)
        url = f"http://127.0.0.1:{port}"
        texts = [f"in flight {i}" for i in range(in_flight)]
        with (
            ThreadPoolExecutor(in_flight) as pool,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            futures = [
                pool.submit(httpx.post, f"{url}/embed", json={"inputs": t}, timeout=60)
                for t in texts
            ]
            deadline = time.monotonic() + 20
            while value(scrape(client), "te_request_in_flight") < in_flight:
                assert time.monotonic() < deadline, "requests did not arrive"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        model = FakeModel()
        for text, answer in zip(texts, answers, strict=True):
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json(), expected.embeddings(model, [text]), atol=1e-6)
        assert process.wait(timeout=30) == 0
        assert _refuses(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
