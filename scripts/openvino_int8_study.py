"""OpenVINO int8 (NNCF post-training quantization) against the package's variants on this CPU.

The package's fused fp32 graph is read by OpenVINO, quantized by NNCF (transformer preset, calibrated
on the same kind of text as the package's int8) and compiled at f32 and bf16 inference precision
(the layers NNCF leaves in float run at that precision). Fidelity is judged as the export judges
int8: the package's fidelity set (fidelity.npz: texts + the PyTorch reference), the INT8
thresholds of tei_ort.fidelity. Speed: the benchmark's texts in 2,048-token batches, rounds
alternating between engines, the fastest round of each counting.

    pip install nncf   # not a tei_ort dependency: a study
    .venv/bin/python scripts/openvino_int8_study.py PACKAGE [--texts 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov

from tei_ort.bench.engines import padded_batches
from tei_ort.errors import PackageError
from tei_ort.export import corpus
from tei_ort.fidelity import compare, n_queries
from tei_ort.package import Task, VariantName
from tei_ort.runtime import Model, RuntimeOptions, outputs
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.fidelity_check import read_fidelity_set
from tei_ort.runtime.padding import Feeds, pad

Run = Callable[[Feeds], np.ndarray]


def main() -> None:
    import nncf

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per batch")
    args = p.parse_args()
    cpu = this_cpu()
    print(f"cpu: {cpu.describe()}")
    options = RuntimeOptions("cpu", "fp32", intra_op_threads=args.threads)
    fp32 = Model.load(args.package, options)
    # The package's int8 variants that pass on this CPU (8-bit int8 fails on AVX2 without VNNI).
    ort_int8 = {}
    for name in (VariantName.INT8, VariantName.INT8_W7):
        try:
            ort_int8[name] = Model.load(
                args.package, RuntimeOptions("cpu", name.value, intra_op_threads=args.threads)
            )
        except PackageError as e:
            print(f"ORT {name.value}: not loaded here ({str(e)[:120]})")
    m = fp32.manifest
    fidelity_set = read_fidelity_set(args.package)
    assert fidelity_set is not None, "the package has no fidelity.npz: re-export it"

    core = ov.Core()
    graph = core.read_model(str(args.package / fp32.variant.file))
    names = {i.get_any_name() for i in graph.inputs}
    calibration = [
        {k: v for k, v in pad([e], m.pad_token_id, m.uses_token_type_ids).items() if k in names}
        for e in fp32.encode(corpus.mixed(args.calibration, offset=300))
    ]
    started = time.perf_counter()
    quantized = nncf.quantize(
        graph,
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )
    print(f"NNCF quantized in {time.perf_counter() - started:.1f} s")

    def ov_engine(model: ov.Model, precision: str) -> Run:
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": args.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.output(0)
        inputs = {i.get_any_name() for i in compiled.inputs}
        return lambda feeds: np.array(
            request.infer({k: v for k, v in feeds.items() if k in inputs})[output]
        )

    engines: dict[str, tuple[Run, VariantName]] = {"ORT fp32": (fp32.session.run, VariantName.FP32)}
    for name, model in ort_int8.items():
        engines[f"ORT {name.value} (package)"] = (model.session.run, VariantName.INT8)
    engines["OpenVINO f32"] = (ov_engine(graph, "f32"), VariantName.FP32)
    engines["OpenVINO int8 (NNCF) + f32"] = (ov_engine(quantized, "f32"), VariantName.INT8)
    if cpu.has_native_bf16:  # elsewhere a bf16 hint silently computes f32
        engines["OpenVINO bf16"] = (ov_engine(graph, "bf16"), VariantName.BF16)
        engines["OpenVINO int8 (NNCF) + bf16"] = (ov_engine(quantized, "bf16"), VariantName.INT8)

    def embed(run: Run, texts: list[str]) -> np.ndarray:
        encodings = fp32.encode(texts)
        out = np.zeros((len(texts), m.dimensions), np.float32)
        for idx, feeds in padded_batches(fp32, encodings, args.batch_tokens):
            hidden = np.asarray(run(feeds), dtype=np.float32)
            out[idx] = outputs.normalize(outputs.pool(hidden, feeds["attention_mask"], m.pooling))
        return out

    texts = corpus.mixed(args.texts)
    encodings = fp32.encode(texts)
    tokens = sum(len(e) for e in encodings)
    batches = padded_batches(fp32, encodings, args.batch_tokens)
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(args.rounds):
        for name, (run, _) in engines.items():
            start = time.perf_counter()
            for _, feeds in batches:
                run(feeds)
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{len(texts)} texts, {tokens} tokens, {len(batches)} batches, {args.threads} threads")
    base = tokens / best["ORT fp32"]
    vset = fidelity_set.vset
    for name, (run, variant) in engines.items():
        got = embed(run, list(vset.texts))
        v = compare(
            Task.EMBEDDING, variant, fidelity_set.reference, got, n_queries(Task.EMBEDDING, vset)
        )
        speed = tokens / best[name]
        print(
            f"{name:28} {speed:8.0f} tok/s {speed / base:5.2f}x ORT fp32 | vs PyTorch: cosine "
            f"min {v.cosine_min:.5f} overlap@10 {v.overlap_at_10:.3f} "
            f"({'pass' if v.passed else 'FAIL'} at {variant.value}'s bar)"
        )


if __name__ == "__main__":
    main()
