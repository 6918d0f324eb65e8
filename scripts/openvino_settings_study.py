"""OpenVINO compile settings for the bf16 variant, side by side on this CPU: the same padded
batches (the benchmark's corpus, length-sorted, under each padded-token budget, lengths padded to
multiples of 16 as Model.forward pads them) on each configuration, in interleaved rounds whose
order reverses every round; each configuration's fastest round counts. Reported as real tokens/s
and the ratio to the first configuration (the served one, tei_ort.runtime.openvino_session).

    .venv/bin/python scripts/openvino_settings_study.py PACKAGE [--budgets 1024,2048,4096]
        [--configs latency,throughput2,latency-f32weights,latency-pinned] [--rounds 3]

Configurations (CONFIGS below): `latency` is what the server compiles; `throughputN` compiles
with PERFORMANCE_HINT THROUGHPUT and N streams and keeps N infer requests busy through
OpenVINO's AsyncInferQueue (what an engine with N requests in flight would reach at best);
`-f32weights` skips the fp16 weight compression; `-pinned` sets ENABLE_CPU_PINNING.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.padding import Feeds, pad
from tei_ort.runtime.trial import budget_batches


@dataclass(frozen=True)
class Config:
    properties: dict[str, Any]
    requests: int = 1  # infer requests kept in flight
    split: bool = False  # each batch's rows split between the requests, run at once
    fp16_weights: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


BASE = {"INFERENCE_PRECISION_HINT": "bf16", "CPU_RUNTIME_CACHE_CAPACITY": 256}
CONFIGS = {
    "latency": Config({**BASE, "PERFORMANCE_HINT": "LATENCY"}),
    "latency-f32weights": Config({**BASE, "PERFORMANCE_HINT": "LATENCY"}, fp16_weights=False),
    "latency-pinned": Config({**BASE, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": True}),
    "latency-nopin": Config({**BASE, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}),
    "throughput2": Config({**BASE, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2}, requests=2),
    "throughput2-split": Config(
        {**BASE, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2}, requests=2, split=True
    ),
    "throughput1x2": Config(  # two streams, but one request at a time (what one engine thread does)
        {**BASE, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2}, requests=1
    ),
}


def compile_config(graph: Path, config: Config, threads: int) -> Any:
    core = ov.Core()
    model = core.read_model(str(graph))
    if config.fp16_weights:
        from openvino._offline_transformations import compress_model_transformation

        compress_model_transformation(model)
    properties = {**config.properties, "INFERENCE_NUM_THREADS": threads}
    return core.compile_model(model, "CPU", properties)


def runner(compiled: Any, config: Config) -> Callable[[list[Feeds]], list[np.ndarray]]:
    names = {i.get_any_name() for i in compiled.inputs}
    output = compiled.output(0)
    if config.requests == 1:
        request = compiled.create_infer_request()

        def run_one(batches: list[Feeds]) -> list[np.ndarray]:
            out = []
            for feeds in batches:
                result = request.infer({k: v for k, v in feeds.items() if k in names})
                out.append(np.array(result[output], dtype=np.float32))
            return out

        return run_one
    if config.split:
        requests = [compiled.create_infer_request() for _ in range(config.requests)]

        def run_split(batches: list[Feeds]) -> list[np.ndarray]:
            out = []
            for feeds in batches:
                rows = len(feeds["input_ids"])
                parts = min(rows, len(requests))
                cuts = [rows * k // parts for k in range(parts + 1)]
                for k in range(parts):
                    part = {n: v[cuts[k] : cuts[k + 1]] for n, v in feeds.items() if n in names}
                    requests[k].start_async(part)
                for k in range(parts):
                    requests[k].wait()
                out.append(
                    np.concatenate([requests[k].get_tensor(output).data for k in range(parts)])
                )
            return out

        return run_split
    queue = ov.AsyncInferQueue(compiled, config.requests)

    def run_many(batches: list[Feeds]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.empty(0)] * len(batches)

        def done(request: Any, index: int) -> None:
            out[index] = np.array(request.get_tensor(output).data, dtype=np.float32)

        queue.set_callback(done)
        for index, feeds in enumerate(batches):
            queue.start_async({k: v for k, v in feeds.items() if k in names}, index)
        queue.wait_all()
        return out

    return run_many


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--budgets", default="1024,2048,4096")
    p.add_argument("--configs", default="latency,throughput2,latency-f32weights")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--texts", type=int, default=512)
    args = p.parse_args()
    print(f"cpu: {this_cpu().describe()}, openvino {ov.__version__}")
    model = Model.load(args.package, RuntimeOptions("cpu", "fp32", intra_op_threads=1))
    m = model.manifest
    texts = corpus.mixed(args.texts)
    encodings = model.encode(texts)
    tokens = sum(len(e) for e in encodings)
    plans = {
        b: [
            pad([encodings[i] for i in batch], m.pad_token_id, m.uses_token_type_ids, multiple=16)
            for batch in budget_batches(encodings, b)
        ]
        for b in (int(x) for x in args.budgets.split(","))
    }
    graph = args.package / model.variant.file
    names = args.configs.split(",")
    runs = {n: runner(compile_config(graph, CONFIGS[n], args.threads), CONFIGS[n]) for n in names}
    reference = {b: runs[names[0]](batches) for b, batches in plans.items()}
    for name in names[1:]:  # same outputs, whatever the schedule
        for b, batches in plans.items():
            diff = max(
                float(np.abs(x - y).max())
                for x, y in zip(runs[name](batches), reference[b], strict=True)
            )
            print(f"{name} budget {b}: max abs diff to {names[0]} {diff:.3g}")
    seconds: dict[tuple[str, int], list[float]] = {(n, b): [] for n in names for b in plans}
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for b, batches in plans.items():
            for n in order:
                start = time.perf_counter()
                runs[n](batches)
                seconds[n, b].append(time.perf_counter() - start)
    print(f"{len(texts)} texts, {tokens} real tokens, {args.threads} threads, {args.rounds} rounds")
    first_budget = next(iter(plans))
    base = seconds[names[0], first_budget]
    for b in plans:
        for n in names:
            # Per round, against the baseline's time in that same round (a slow spell of the
            # shared machine falls on both); the median of those ratios, and the fastest rounds'.
            ratios = sorted(x / y for x, y in zip(base, seconds[n, b], strict=True))
            print(
                f"budget {b:5d} {n:20s} fastest {tokens / min(seconds[n, b]):8,.0f} tok/s  "
                f"median ratio {ratios[len(ratios) // 2]:5.2f}x, fastest-round ratio "
                f"{min(base) / min(seconds[n, b]):5.2f}x ({names[0]} at budget {first_budget})"
            )


if __name__ == "__main__":
    main()
