"""ONNX Runtime session options on this CPU, on the benchmark's texts and batches: graph
optimization level, the CPU memory arena, the memory pattern and thread spinning, for the fp32 and
int8 variants. Rounds alternate between settings; the fastest round of each counts.

    .venv/bin/python scripts/ort_options_study.py PACKAGE [--texts 512] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnxruntime as ort

from tei_ort.bench.engines import padded_batches
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions

SETTINGS: dict[str, dict[str, object]] = {
    "ours (all optimizations, arena, pattern, no spinning)": {},
    "extended optimizations": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
    "basic optimizations": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
    "no CPU memory arena": {"arena": False},
    "no memory pattern": {"pattern": False},
    "spinning on (ORT's default)": {"spinning": True},
}


def session(graph: Path, threads: int, setting: dict[str, object]) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = setting.get("level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.enable_cpu_mem_arena = bool(setting.get("arena", True))
    so.enable_mem_pattern = bool(setting.get("pattern", True))
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    spinning = "1" if setting.get("spinning", False) else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=int, default=2048)
    args = p.parse_args()
    model = Model.load(args.package, RuntimeOptions("cpu", "fp32"))
    m = model.manifest
    encodings = model.encode(corpus.mixed(args.texts))
    tokens = sum(len(e) for e in encodings)
    batches = [feeds for _, feeds in padded_batches(model, encodings, args.budget)]
    for variant in ("fp32", "int8"):
        graph = args.package / m.variant(variant).file
        sessions = {name: session(graph, args.threads, s) for name, s in SETTINGS.items()}
        names = {i.name for i in next(iter(sessions.values())).get_inputs()}
        feeds = [{k: v for k, v in b.items() if k in names} for b in batches]
        best = dict.fromkeys(sessions, float("inf"))
        for _ in range(args.rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                for f in feeds:
                    s.run(None, f)
                best[name] = min(best[name], time.perf_counter() - start)
        ours = best[next(iter(SETTINGS))]
        for name in sessions:
            print(
                f"{variant} {name:54} {tokens / best[name]:8.0f} tok/s  {ours / best[name]:5.2f}x"
            )


if __name__ == "__main__":
    main()
