"""Where a lone short query's time goes, beyond the raw runtime's tokenize + forward.

Study script (issue 9's "a short query within 1 ms of raw"). Three parts, medians over
`--rounds` passes of 64 short queries, one at a time:

1. in process: the raw runtime (1 thread, and ORT's default threads) against `Engine.embed` on a
   1-thread session, with the engine's stages timed by wrapping the batcher's methods: the
   forward thread's wake-up, the forward, the event loop's wake-up after it, the rest;
2. the same hand-offs with no model: a thread woken through a Condition, and the loop woken by
   call_soon_threadsafe after the thread worked 0, 1 or 7 ms (the floor a VM's idle vCPUs set);
3. with `--url` (a running tei-serve): /health and /embed through HTTP, alternating with the raw
   runtime, as `make bench` does.

    .venv/bin/python scripts/short_query_breakdown.py PACKAGE [--url http://127.0.0.1:8080]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tei_ort.engine import Engine, EngineConfig
from tei_ort.engine import batcher as batcher_module
from tei_ort.engine.types import EmbedRequest
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu

Samples = dict[str, list[float]]


def _add(samples: Samples, key: str, seconds: float) -> None:
    samples.setdefault(key, []).append(seconds)


def _medians_ms(samples: Samples) -> str:
    return ", ".join(f"{k} {statistics.median(v) * 1000:.3f}" for k, v in samples.items())


def _timed_batcher(marks: dict[str, float]) -> None:
    """Wrap the batcher's stages so that each call records its start and end in `marks`."""
    cls: Any = batcher_module.Batcher

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: Any, *args: Any) -> Any:
            marks[name + "0"] = time.perf_counter()
            out = fn(self, *args)
            marks[name + "1"] = time.perf_counter()
            return out

        return timed

    for name in ("_next_batch", "_forward", "_deliver", "_call_soon"):
        setattr(cls, name, wrap(name, getattr(cls, name)))
    run = cls.run

    async def timed_run(self: Any, *args: Any) -> Any:
        marks["run0"] = time.perf_counter()
        out = await run(self, *args)
        marks["run1"] = time.perf_counter()
        return out

    cls.run = timed_run


async def in_process(package: Path, texts: list[str], rounds: int) -> Samples:
    one = Model.load(package, RuntimeOptions(intra_op_threads=1))
    default = Model.load(package, RuntimeOptions())
    served = Model.load(package, RuntimeOptions(intra_op_threads=1))
    marks: dict[str, float] = {}
    _timed_batcher(marks)
    engine = Engine(served, EngineConfig(target_batch_tokens=512))
    await engine.start()
    samples: Samples = {}
    for _ in range(rounds):
        for text in texts:
            for key, model in (("raw 1 thread", one), ("raw default threads", default)):
                started = time.perf_counter()
                model.forward(model.encode([text]))
                _add(samples, key, time.perf_counter() - started)
            started = time.perf_counter()
            await engine.embed(EmbedRequest([text]))
            ended = time.perf_counter()
            _add(samples, "engine.embed", ended - started)
            _add(samples, "  before the batcher (validate, tokenize)", marks["run0"] - started)
            _add(samples, "  forward thread wakes", marks["_next_batch0"] - marks["run0"])
            _add(samples, "  forms the batch", marks["_next_batch1"] - marks["_next_batch0"])
            _add(samples, "  forward", marks["_forward1"] - marks["_forward0"])
            _add(samples, "  loop wakes for the result", marks["_deliver0"] - marks["_call_soon0"])
            _add(samples, "  deliver + resume", marks["run1"] - marks["_deliver0"])
            _add(samples, "  after the batcher (stack, normalize)", ended - marks["run1"])
    await engine.stop()
    return samples


async def hand_offs(rounds: int) -> Samples:
    loop = asyncio.get_running_loop()
    ready = threading.Condition()
    box: list[tuple[asyncio.Future[tuple[float, float]], float]] = []

    def worker() -> None:
        while True:
            with ready:
                while not box:
                    ready.wait()
                future, work_s = box.pop()
            woke = time.perf_counter()
            end = woke + work_s
            while time.perf_counter() < end:
                time.sleep(0)  # busy, but lets the loop's thread run
            loop.call_soon_threadsafe(future.set_result, (woke, time.perf_counter()))

    threading.Thread(target=worker, daemon=True).start()
    samples: Samples = {}
    for work_ms in (0, 1, 7):
        for _ in range(rounds * 64):
            future: asyncio.Future[tuple[float, float]] = loop.create_future()
            with ready:
                sent = time.perf_counter()
                box.append((future, work_ms / 1000))
                ready.notify()
            woke, posted = await future
            _add(samples, f"thread wakes ({work_ms} ms of work)", woke - sent)
            _add(samples, f"loop wakes after {work_ms} ms", time.perf_counter() - posted)
    return samples


async def through_http(url: str, package: Path, texts: list[str], rounds: int) -> Samples:
    import aiohttp

    raw = Model.load(package, RuntimeOptions())
    samples: Samples = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for text in texts:
                started = time.perf_counter()
                raw.forward(raw.encode([text]))
                _add(samples, "raw default threads", time.perf_counter() - started)
                started = time.perf_counter()
                async with session.post(url + "/embed", json={"inputs": text}) as response:
                    await response.read()
                _add(samples, "POST /embed", time.perf_counter() - started)
                started = time.perf_counter()
                async with session.get(url + "/health") as response:
                    await response.read()
                _add(samples, "GET /health", time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--url", help="a running tei-serve of the same package")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"cpu: {this_cpu().describe()}")
    texts = corpus.queries(64)
    print(
        "in process (ms):", _medians_ms(asyncio.run(in_process(args.package, texts, args.rounds)))
    )
    print("hand-offs alone (ms):", _medians_ms(asyncio.run(hand_offs(args.rounds))))
    if args.url:
        samples = asyncio.run(through_http(args.url, args.package, texts, args.rounds))
        print("through HTTP (ms):", _medians_ms(samples))


if __name__ == "__main__":
    main()
