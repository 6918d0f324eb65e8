"""`python -m tei_ort.bench.gpu`: the CUDA benchmark scripts/gpu_check runs.

On one GPU, in one run, on the same texts: the raw runtime's fp16 graph on the CUDA EP with IO
binding (length-sorted batches under the padded-token budget, and batch 32 like sentence-
transformers), against sentence-transformers fp16 on the same GPU (its default encode, batch 32,
and batch 256), plus one short query at a time for each. With --reference (texts and
sentence-transformers fp32 embeddings computed elsewhere) it also reports the fp16 graph's fidelity
on CUDA.

When --source holds no weights (a machine with no copy of them), the sentence-transformers model is
built from its config with random weights: the same architecture, shapes, tokenizer and batching,
so the same work per token, and its throughput is a fair baseline; its vectors mean nothing and
are never compared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tei_ort.bench import report
from tei_ort.bench.engines import _batches, _best_of, run_batches
from tei_ort.bench.measure import Measurement
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions, outputs
from tei_ort.runtime.trial import budget_batches

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BUDGET_TOKENS = 16384  # the CUDA provider has no CPU-cache target: the server's max-batch-tokens


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tei_ort.bench.gpu", description=__doc__)
    p.add_argument("--package", type=Path, required=True, help="package with an fp16 variant")
    p.add_argument("--source", type=Path, required=True, help="sentence-transformers folder")
    p.add_argument("--reference", type=Path, help="npz with texts and reference embeddings")
    p.add_argument("--texts", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-out/gpu"))
    return p.parse_args()


def raw(
    model: Model, texts: Sequence[str], batches: list[list[int]], name: str, repeats: int
) -> Measurement:
    encodings = model.encode(texts)
    seconds, latencies = run_batches(model, encodings, batches, repeats)
    tokens = sum(len(e) for e in encodings)
    return Measurement(name, "raw", len(texts), tokens, seconds, latencies)


def st_batches(model: Model, texts: Sequence[str], size: int) -> list[list[int]]:
    """sentence-transformers' order: by length (characters), longest first, `size` per batch."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return _batches(order, size)


def load_sentence_transformer(source: Path, work: Path) -> tuple[Any, bool]:
    """SentenceTransformer in fp16 on CUDA; random weights when `source` has none."""
    import torch
    from sentence_transformers import SentenceTransformer

    real = any((source / f).is_file() for f in WEIGHT_FILES)
    if not real:
        from transformers import AutoConfig, AutoModel

        folder = work / "st-random"
        shutil.copytree(source, folder)
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(folder)
        AutoModel.from_config(config).save_pretrained(folder)  # type: ignore[no-untyped-call]
        source = folder
    model = SentenceTransformer(str(source), device="cuda")
    return model.half(), real


def sentence_transformers(
    st: Any, texts: Sequence[str], tokens: int, batch_size: int, repeats: int, label: str
) -> Measurement:
    st.encode(list(texts[: batch_size * 2]), batch_size=batch_size)  # warm-up

    def once() -> list[float]:
        start = time.perf_counter()
        st.encode(list(texts), batch_size=batch_size)  # returns numpy: synchronizes the GPU
        return [time.perf_counter() - start]

    seconds, latencies = _best_of(repeats, once)
    return Measurement(
        f"sentence-transformers fp16 {label}(batch {batch_size})",
        "baseline",
        len(texts),
        tokens,
        seconds,
        latencies,
    )


def short_queries(
    embed: Any, texts: Sequence[str], tokens: int, name: str, group: str, passes: int = 3
) -> tuple[Measurement, list[float]]:
    """One query at a time. The first pass meets each sequence length for the first time (kernel
    selection, allocations): it is returned apart, as the cold latencies."""
    cold = []
    for text in texts:
        start = time.perf_counter()
        embed([text])
        cold.append(time.perf_counter() - start)
    latencies = []
    for text in list(texts) * passes:
        start = time.perf_counter()
        embed([text])
        latencies.append(time.perf_counter() - start)
    m = Measurement(name, group, len(latencies), tokens * passes, sum(latencies), latencies)
    return m, cold


def end_to_end(model: Model, texts: Sequence[str], repeats: int) -> Measurement:
    """Tokenize, batch under the budget, forward, pool and normalize: the work
    sentence-transformers' encode does, for a like-for-like throughput."""

    def once() -> list[float]:
        start = time.perf_counter()
        encodings = model.encode(texts)
        for batch in budget_batches(encodings, BUDGET_TOKENS):
            outputs.normalize(model.forward([encodings[i] for i in batch]))
        return [time.perf_counter() - start]

    once()
    seconds, latencies = _best_of(repeats, once)
    tokens = sum(len(e) for e in model.encode(texts))
    name = "tei_ort fp16 cuda end to end (tokenize+forward)"
    return Measurement(name, "raw", len(texts), tokens, seconds, latencies)


def fidelity(model: Model, reference: Path) -> dict[str, float]:
    data = np.load(reference, allow_pickle=False)
    texts = [str(t) for t in data["texts"]]
    expected = data["embeddings"].astype(np.float32)
    got = model.embed(texts)
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    cosines = np.sum(got * expected, axis=1)
    return {
        "texts": float(len(texts)),
        "cosine_min": float(cosines.min()),
        "cosine_mean": float(cosines.mean()),
        "max_abs_diff": float(np.abs(got - expected).max()),
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = corpus.mixed(args.texts)
    shorts = corpus.queries(128)
    model = Model.load(args.package, RuntimeOptions(provider="cuda", variant="fp16"))
    encodings = model.encode(texts)
    tokens = sum(len(e) for e in encodings)
    short_tokens = sum(len(e) for e in model.encode(shorts))
    print(f"corpus: {len(texts)} texts, {tokens} real tokens; provider {model.provider.value}")

    extra: dict[str, object] = {"package": str(args.package)}
    if args.reference:
        extra["fidelity_fp16_cuda"] = fid = fidelity(model, args.reference)
        print(f"fp16 on CUDA vs reference: {fid}")

    short, cold = short_queries(
        model.embed, shorts, short_tokens, "raw fp16 cuda short query", "raw"
    )
    results = [
        end_to_end(model, texts, args.repeats),
        raw(
            model,
            texts,
            budget_batches(encodings, BUDGET_TOKENS),
            f"raw fp16 cuda ({BUDGET_TOKENS} tok budget)",
            args.repeats,
        ),
        raw(
            model,
            texts,
            st_batches(model, texts, 32),
            "raw fp16 cuda (batch 32, ST order)",
            args.repeats,
        ),
        short,
    ]
    extra["cold_short_query_ms"] = _percentiles(cold)
    with tempfile.TemporaryDirectory() as work:
        st, real = load_sentence_transformer(args.source, Path(work))
        extra["st_weights"] = "real" if real else "random (speed only)"
        label = "" if real else "random-weights "
        st_short, st_cold = short_queries(
            lambda batch: st.encode(batch, batch_size=32),
            shorts,
            short_tokens,
            "sentence-transformers fp16 short query",
            "baseline",
        )
        extra["cold_short_query_ms_sentence_transformers"] = _percentiles(st_cold)
        baselines = [
            sentence_transformers(st, texts, tokens, 32, args.repeats, label),
            sentence_transformers(st, texts, tokens, 256, args.repeats, label),
            st_short,
        ]
    everything = baselines + results
    print(report.table(everything, baselines[0]))
    lines = []
    for ours in results[:2]:
        for base in baselines[:2]:
            lines.append(f"{ours.name} / {base.name}: {ours.tokens_per_s / base.tokens_per_s:.2f}x")
    lines.append(
        f"short query p50: tei_ort {short.percentile_ms(50):.2f} ms, "
        f"sentence-transformers {st_short.percentile_ms(50):.2f} ms; first pass (cold) "
        f"{extra['cold_short_query_ms']} vs {extra['cold_short_query_ms_sentence_transformers']}"
    )
    extra["ratios"] = lines
    print("\n".join(lines))
    report.write_json(args.out / "gpu_bench.json", everything, extra)
    print(json.dumps({"wrote": str(args.out / "gpu_bench.json")}))


if __name__ == "__main__":
    main()
