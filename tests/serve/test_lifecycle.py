"""Back-pressure and lifecycle, on the real engine over a gated fake model: a burst of 10x the
admission limit gets only 200s (each correct) and 429s given at once; a runtime failure shows in
/health and clears; a client that goes away has its work dropped, others unaffected; the server
listens only once warmed up; SIGTERM under load answers every accepted request and exits 0.

Nothing here depends on timing: the model's forwards wait on gates the test opens, and every wait
is on an event or a condition, bounded by TIMEOUT_S only to turn a hang into a failure."""

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tei_ort.engine import Engine, EngineConfig
from tests.conftest import REPO
from tests.serve import expected
from tests.serve.fake_server import GO, READY, WARM, WARMING_UP
from tests.serve.fakes import FakeModel, SlowModel
from tests.serve.live import context, free_port, serve
from tests.serve.scrape import scrape, value

LIMIT = 4
TIMEOUT_S = 60.0


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll a condition that the server makes true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout_s} s"
        time.sleep(0.02)


def _engine(model: SlowModel, **config: object) -> Engine:
    return Engine(model, EngineConfig(max_client_batch_size=8, **config))  # type: ignore[arg-type]


Answer = tuple[str, int, object]  # (text, status, body)


def test_burst_of_ten_times_the_limit() -> None:
    model = SlowModel(forward_s=0.0)
    texts = [f"request number {i}" for i in range(10 * LIMIT)]

    async def burst(url: str) -> tuple[list[Answer], list[Answer]]:
        limits = httpx.Limits(max_connections=len(texts))
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=limits) as client:

            async def one(text: str) -> Answer:
                r = await client.post("/embed", json={"inputs": text})
                return text, r.status_code, r.json()

            pending = {asyncio.create_task(one(t)) for t in texts}
            # The gate is held: no admitted request can finish, so every answer that comes back
            # now was given without waiting for a slot. All but LIMIT must come back.
            early: list[Answer] = []
            while len(early) < len(texts) - LIMIT:
                done, pending = await asyncio.wait(
                    pending, timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                )
                assert done, f"only {len(early)} answers while the model was held"
                early += [task.result() for task in done]
            model.gate.set()
            return early, list(await asyncio.gather(*pending))

    with serve(context(_engine(model, max_concurrent_requests=LIMIT))) as url:
        model.gate.clear()  # after the warm-up
        refused, admitted = asyncio.run(burst(url))
        with httpx.Client(base_url=url) as client:
            samples = scrape(client)
            assert client.get("/health").status_code == 200
            after = client.post("/embed", json={"inputs": "after"})
    assert len(admitted) == LIMIT and len(refused) == 9 * LIMIT
    for _, status, body in refused:
        assert (status, body) == (429, {"error": "Model is overloaded", "error_type": "Overloaded"})
    for text, status, body in admitted:
        assert status == 200
        np.testing.assert_allclose(body, expected.embeddings(model, [text]), atol=1e-6)
    assert after.status_code == 200
    np.testing.assert_allclose(after.json(), expected.embeddings(model, ["after"]), atol=1e-6)
    assert value(samples, "te_request_failure", err="overloaded") == 9 * LIMIT
    assert value(samples, "te_request_success", method="single") == LIMIT


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
    model = SlowModel(forward_s=0.0)
    engine = _engine(model, max_batch_requests=1)  # one input per forward: six forwards
    body = b'{"inputs": ["a1", "a2", "a3", "a4", "a5", "a6"]}'
    with serve(context(engine)) as url, httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        model.gate.clear()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as leaving:
            leaving.sendall(
                b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            # "a1" is in the forward, held; "a2".."a6" wait in the queue.
            assert model.entered.acquire(timeout=TIMEOUT_S), "no forward began"
        # The client has gone: its queued inputs leave the queue and it leaves the engine.
        wait_until(
            lambda: engine.stats().queue_size == 0 and engine.stats().in_flight == 0,
            "the leaving request dropped",
        )
        model.gate.set()
        staying = client.post("/embed", json={"inputs": ["b"]})
        ran = model.inputs_run  # before expected.embeddings runs the model once more
        assert staying.status_code == 200
        np.testing.assert_allclose(staying.json(), expected.embeddings(model, ["b"]), atol=1e-6)
        samples = scrape(client)
        stats = engine.stats()
    # Warm-up, the held "a1", and "b": none of "a2".."a6" ever ran.
    assert ran == 3, ran
    assert stats.dropped_inputs_total == 6  # the five never run, and a1's discarded result
    assert value(samples, "te_request_failure", err="dropped") == 1


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for(
    lines: queue.Queue[str], marker: str, seen: list[str], timeout_s: float = TIMEOUT_S
) -> None:
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
    # Gated: the warm-up and every forward wait for a line on stdin (fake_server.WARM, GO).
    command += ["--gated", "--forward-s", "0", "--max-batch-requests", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, seen = _lines(process), []

    def open_gate(line: str) -> None:
        assert process.stdin is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()

    try:
        _wait_for(lines, WARMING_UP, seen)
        assert _refuses(port)  # the warm-up forward is held: nothing listens yet
        open_gate(WARM)
        _wait_for(lines, READY, seen)
        url = f"http://127.0.0.1:{port}"
        texts = [f"in flight {i}" for i in range(in_flight)]
        with (
            ThreadPoolExecutor(in_flight) as pool,
            httpx.Client(base_url=url, timeout=TIMEOUT_S) as client,
        ):
            futures = [
                pool.submit(httpx.post, f"{url}/embed", json={"inputs": t}, timeout=TIMEOUT_S * 2)
                for t in texts
            ]
            # No forward can end before GO: all of them arrive and stay in flight.
            wait_until(
                lambda: value(scrape(client), "te_request_in_flight") == in_flight,
                f"{in_flight} requests in flight",
            )
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: _refuses(port), "the port closed after SIGTERM")
            open_gate(GO)
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
