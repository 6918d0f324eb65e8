"""In-process measurements: the raw runtime, sentence-transformers, and TEI-like ORT batching."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tei_ort.bench.measure import Measurement
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.padding import Feeds, pad
from tei_ort.runtime.providers import PROVIDERS
from tei_ort.runtime.trial import budget_batches
from tei_ort.tokenization import Encoded


def _best_of(repeats: int, run: Callable[[], list[float]]) -> tuple[float, list[float]]:
    """Run `repeats` times; keep the fastest total (the least disturbed by neighbours)."""
    best_total, best_latencies = float("inf"), []
    for _ in range(repeats):
        latencies = run()
        if sum(latencies) < best_total:
            best_total, best_latencies = sum(latencies), latencies
    return best_total, best_latencies


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


def padded_batches(
    model: Model, encodings: Sequence[Encoded], budget: int
) -> list[tuple[list[int], Feeds]]:
    """Length-sorted batches under `budget` padded tokens, as graph inputs (for the studies)."""
    m = model.manifest
    return [
        (idx, pad([encodings[i] for i in idx], m.pad_token_id, m.uses_token_type_ids))
        for idx in budget_batches(encodings, budget)
    ]


def run_batches(
    model: Model, encodings: Sequence[Encoded], batches: list[list[int]], repeats: int
) -> tuple[float, list[float]]:
    def once() -> list[float]:
        latencies = []
        for batch in batches:
            start = time.perf_counter()
            model.forward([encodings[i] for i in batch])
            latencies.append(time.perf_counter() - start)
        return latencies

    model.forward([encodings[i] for i in batches[0]])  # warm-up
    return _best_of(repeats, once)


def raw_runtime(
    package: Path, variant: str, provider: str, texts: Sequence[str], threads: int, repeats: int
) -> Measurement:
    """Pre-tokenized, length-sorted batches under the provider's padded-token target (the
    batching the server aims for): the runtime's best case, with no HTTP, queue or tokenizer."""
    model = Model.load(
        package, RuntimeOptions(provider=provider, variant=variant, intra_op_threads=threads)
    )
    encodings = model.encode(texts)
    budget = PROVIDERS[model.provider].target_batch_tokens or 16384
    seconds, latencies = run_batches(model, encodings, budget_batches(encodings, budget), repeats)
    tokens = sum(len(e) for e in encodings)
    return Measurement(f"raw {variant} {provider}", "raw", len(texts), tokens, seconds, latencies)


def tei_like(package: Path, texts: Sequence[str], threads: int, repeats: int) -> Measurement:
    """ONNX Runtime fp32 as TEI runs it on CPU: FIFO (arrival order), at most 8 per batch."""
    model = Model.load(
        package, RuntimeOptions(provider="cpu", variant="fp32", intra_op_threads=threads)
    )
    encodings = model.encode(texts)
    seconds, latencies = run_batches(model, encodings, _batches(range(len(texts)), 8), repeats)
    tokens = sum(len(e) for e in encodings)
    return Measurement(
        "TEI-like ORT fp32 (FIFO, 8/batch)", "baseline", len(texts), tokens, seconds, latencies
    )


def sentence_transformers(
    source: Path, texts: Sequence[str], tokens: int, threads: int, repeats: int
) -> Measurement:
    """sentence-transformers' default encode: PyTorch fp32, batch 32 (it sorts by characters)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(source), device="cpu")
    model.encode(list(texts[:32]), batch_size=32)  # warm-up

    def once() -> list[float]:
        start = time.perf_counter()
        model.encode(list(texts), batch_size=32)
        return [time.perf_counter() - start]

    seconds, latencies = _best_of(repeats, once)
    return Measurement(
        "sentence-transformers fp32 (batch 32)", "baseline", len(texts), tokens, seconds, latencies
    )
