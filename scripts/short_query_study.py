"""Where a short query's time goes in the engine, and what tokenizing it on the event loop saves
over the hand-off to a tokenization thread. Alternating rounds of one query at a time through
Engine.embed, with INLINE_TOKENIZATION_CHARS at 0 (always the pool) and at its default, plus the
raw runtime (tokenize + forward) as the floor.

    .venv/bin/python scripts/short_query_study.py [PACKAGE] [--rounds 6] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from tei_ort.engine import EmbedRequest, Engine, EngineConfig
from tei_ort.engine import engine as engine_module
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions


async def engine_round(engine: Engine, texts: list[str]) -> list[float]:
    latencies = []
    for text in texts:
        start = time.perf_counter()
        await engine.embed(EmbedRequest([text]))
        latencies.append(time.perf_counter() - start)
    return latencies


def raw_round(model: Model, texts: list[str]) -> list[float]:
    latencies = []
    for text in texts:
        start = time.perf_counter()
        model.forward(model.encode([text]))
        latencies.append(time.perf_counter() - start)
    return latencies


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path, nargs="?")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--queries", type=int, default=200)
    args = p.parse_args()
    package = args.package or next((Path.home() / ".cache/tei_ort/packages").glob("default-*"))
    model = Model.load(package, RuntimeOptions(provider="cpu"))
    texts = corpus.queries(args.queries)
    engine = Engine(model, EngineConfig())
    await engine.start()
    default = engine_module.INLINE_TOKENIZATION_CHARS
    modes = {"pool (limit 0)": 0, f"inline (limit {default})": default}
    samples: dict[str, list[float]] = {name: [] for name in [*modes, "raw"]}
    try:
        for _ in range(args.rounds):
            for name, limit in modes.items():
                engine_module.INLINE_TOKENIZATION_CHARS = limit
                samples[name] += await engine_round(engine, texts)
            samples["raw"] += raw_round(model, texts)
    finally:
        engine_module.INLINE_TOKENIZATION_CHARS = default
        await engine.stop()
    raw_p50 = statistics.median(samples["raw"]) * 1000
    for name, values in samples.items():
        p50 = statistics.median(values) * 1000
        print(
            f"{name:22} p50 {p50:6.3f} ms  over raw {p50 - raw_p50:+.3f} ms  ({len(values)} queries)"
        )


if __name__ == "__main__":
    asyncio.run(main())
