"""OpenVINO (the native `openvino` package) against ONNX Runtime on this CPU, on the benchmark's
texts and batches: the package's fused fp32 graph compiled by OpenVINO at f32, bf16 (AMX/AVX512_BF16)
and f16 inference precision, against ORT's fp32 and int8 variants. Fidelity is the cosine of each
pooled, normalized embedding against ORT fp32 (which matches sentence-transformers to 2e-7).
Rounds alternate between engines; the fastest round of each counts.

    .venv/bin/python scripts/openvino_study.py PACKAGE [--texts 512] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov

from tei_ort.bench.engines import padded_batches
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=int, default=2048)
    args = p.parse_args()
    fp32 = Model.load(args.package, RuntimeOptions("cpu", "fp32", intra_op_threads=args.threads))
    int8 = Model.load(args.package, RuntimeOptions("cpu", "int8", intra_op_threads=args.threads))
    texts = corpus.mixed(args.texts)
    encodings = fp32.encode(texts)
    tokens = sum(len(e) for e in encodings)
    m = fp32.manifest
    batches = padded_batches(fp32, encodings, args.budget)

    core = ov.Core()
    graph = core.read_model(str(args.package / fp32.variant.file))

    def ov_engine(precision: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": args.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = core.compile_model(graph, "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.output(0)
        names = {i.get_any_name() for i in compiled.inputs}
        return lambda feeds: request.infer({k: v for k, v in feeds.items() if k in names})[output]

    engines: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
        "ORT fp32": fp32.session.run,
        "ORT int8": int8.session.run,
        "OpenVINO f32": ov_engine("f32"),
        "OpenVINO bf16": ov_engine("bf16"),
        "OpenVINO f16": ov_engine("f16"),
    }

    def embed(run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> np.ndarray:
        out = np.zeros((len(texts), m.dimensions), np.float32)
        for idx, feeds in batches:
            hidden = np.asarray(run(feeds), dtype=np.float32)
            out[idx] = outputs.normalize(outputs.pool(hidden, feeds["attention_mask"], m.pooling))
        return out

    reference = embed(engines["ORT fp32"])
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(args.rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            for _, feeds in batches:
                run(feeds)
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{len(texts)} texts, {tokens} tokens, {len(batches)} batches, {args.threads} threads")
    base = tokens / best["ORT fp32"]
    for name, run in engines.items():
        cosines = np.sum(embed(run) * reference, axis=1)
        speed = tokens / best[name]
        print(
            f"{name:14} {speed:8.0f} tok/s  {speed / base:5.2f}x ORT fp32  "
            f"cosine min {cosines.min():.6f} mean {cosines.mean():.6f}"
        )


if __name__ == "__main__":
    main()
