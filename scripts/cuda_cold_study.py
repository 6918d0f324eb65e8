"""How much the first forward of a new (batch, length) shape costs on the CUDA EP, and what removes
it: CUDA's lazy module loading (the default) against CUDA_MODULE_LOADING=EAGER,
a warm-up grid of 96 shapes, ORT's memory pattern, and ORT's attention kernels. Each mode runs in
a fresh process.

Measured on an H200 (2026-11-27, ORT 1.31.1, CUDA 13, MiniLM fp16): the first forward of a new
(batch, length) shape took 40-50 ms (p50) in every mode, a shape seen before 0.9-1.5 ms. None of
the knobs removes it: eager loading and the grid shave ~5 ms, the memory pattern and the attention
kernels nothing. The cost is per exact shape, so the remedy left to try is to bound the shapes
(lengths padded to buckets, batch rows to powers of two) and warm each bucket up.

    python scripts/cuda_cold_study.py PACKAGE
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np

MODES = {
    "defaults, one warm-up forward": {},
    "no memory pattern": {"STUDY_NO_MEM_PATTERN": "1"},
    "no memory pattern, warm-up grid": {"STUDY_NO_MEM_PATTERN": "1", "STUDY_GRID": "1"},
    "no memory pattern, eager modules": {
        "STUDY_NO_MEM_PATTERN": "1",
        "CUDA_MODULE_LOADING": "EAGER",
    },
    "flash attention off": {"ORT_DISABLE_FLASH_ATTENTION": "1"},
    "flash + memory-efficient attention off": {
        "ORT_DISABLE_FLASH_ATTENTION": "1",
        "ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION": "1",
    },
    "all fused attention off": {
        "ORT_DISABLE_FLASH_ATTENTION": "1",
        "ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION": "1",
        "ORT_DISABLE_FUSED_ATTENTION": "1",
        "ORT_DISABLE_TRT_FLASH_ATTENTION": "1",
    },
}


def child(package: str) -> None:
    from tei_ort.runtime import Model, RuntimeOptions
    from tei_ort.tokenization import Encoded

    start = time.perf_counter()
    model = Model.load(package, RuntimeOptions(provider="cuda"))
    if os.environ.get("STUDY_NO_MEM_PATTERN"):
        # The same graph and providers, with ORT's per-shape memory plan off.
        import onnxruntime as ort

        from tei_ort.runtime.providers import ort_providers

        so = ort.SessionOptions()
        so.enable_mem_pattern = False
        graph = str(model.path / model.variant.file)
        providers = ort_providers(model.provider, 0)
        model.session._session = ort.InferenceSession(graph, so, providers=providers)  # type: ignore[attr-defined]
    base = model.encode(["warm up " * 400])[0]

    def run(batch: int, length: int) -> float:
        one = Encoded(base.ids[:length], base.type_ids[:length])
        t = time.perf_counter()
        model.forward([one] * batch)
        return (time.perf_counter() - t) * 1000

    run(1, len(base))
    load_s = time.perf_counter() - start
    grid_s, shapes_n = 0.0, 0
    if os.environ.get("STUDY_GRID"):
        t = time.perf_counter()
        lengths = [*range(8, len(base), 8), len(base)]
        shapes = [(b, n) for b in (1, 8, 64) for n in lengths if b * n <= 16384]
        for shape in shapes:
            run(*shape)
        grid_s, shapes_n = time.perf_counter() - t, len(shapes)
    rng = random.Random(1)
    probes = [(rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 50]), rng.randint(5, 256)) for _ in range(40)]
    cold = [run(*s) for s in probes]
    warm = [run(*s) for s in probes]

    def stats(ms: list[float]) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 100)}

    print(
        json.dumps(
            {
                "load_and_first_forward_s": round(load_s, 2),
                "grid_s": round(grid_s, 2),
                "grid_shapes": shapes_n,
                "cold_ms": stats(cold),
                "warm_ms": stats(warm),
            }
        )
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    for name, env in MODES.items():
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--child", sys.argv[1]],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            print(f"{name}: timed out after 60 s", flush=True)
            continue
        ok = out.returncode == 0
        result = out.stdout.strip().splitlines()[-1] if ok else out.stderr[-800:]
        print(f"{name}: {result}", flush=True)


if __name__ == "__main__":
    main()
