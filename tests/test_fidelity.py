"""The validation note names the bars a variant was actually held to: overlap@10 only where
queries were searched over passages, cosine only for vectors, the logits' max abs diff scaled."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tei_ort.fidelity import TASK_KINDS, THRESHOLDS, compare
from tei_ort.package import Task, VariantName


def _vectors(n: int = 40, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_a_dense_embedder_names_cosine_and_overlap() -> None:
    ref = _vectors()
    v = compare(Task.EMBEDDING, VariantName.INT8, ref, ref.copy(), n_queries=10)
    assert v.note == "thresholds: cosine >= 0.995, overlap@10 >= 0.95"
    assert v.overlap_at_10 == 1.0


def test_colbert_token_rows_do_not_name_overlap() -> None:
    """BGE-M3's ColBERT head: dense bars over token rows, no queries (n_queries=0), so no
    overlap is computed and none is named; cosine and max abs diff are what apply."""
    ref = _vectors()
    bf16 = compare(Task.EMBEDDING, VariantName.BF16, ref, ref.copy(), n_queries=0)
    assert bf16.note == "thresholds: cosine >= 0.999"
    assert bf16.overlap_at_10 is None and bf16.passed
    fp32 = compare(Task.EMBEDDING, VariantName.FP32, ref, ref.copy(), n_queries=0)
    assert fp32.note == "thresholds: cosine >= 0.99999, max abs diff <= 0.0001"


def test_sparse_without_queries_names_cosine_only() -> None:
    ref = np.zeros((4, 50), dtype=np.float32)
    ref[:, :5] = 1.0
    v = compare(Task.SPARSE_EMBEDDING, VariantName.FP16, ref, ref.copy(), n_queries=0)
    assert v.note == "thresholds: cosine >= 0.999; non-zero term mismatches: 0"
    v = compare(Task.SPARSE_EMBEDDING, VariantName.FP16, ref, ref.copy(), n_queries=2)
    assert v.note == "thresholds: cosine >= 0.999, overlap@10 >= 0.95; non-zero term mismatches: 0"


def test_logits_name_the_scaled_bar() -> None:
    ref = np.array([[20.0], [-15.0]], dtype=np.float32)
    scaled = compare(Task.RERANKER, VariantName.FP16, ref, ref + 0.3, n_queries=0)
    assert scaled.passed and scaled.note == "thresholds: max abs diff <= 0.4 (0.02 x 20)"
    plain = compare(Task.CLASSIFICATION, VariantName.FP16, ref / 100, ref / 100, n_queries=0)
    assert plain.note == "thresholds: max abs diff <= 0.02"
    failed = compare(Task.RERANKER, VariantName.FP16, ref, ref + 0.5, n_queries=0)
    assert (
        failed.note == "FAILED max abs diff 0.5 > 0.4; thresholds: max abs diff <= 0.4 (0.02 x 20)"
    )


@pytest.mark.parametrize(
    ("task", "variant", "n_queries"),
    [
        (task, variant, n_queries)
        for task, variant, n_queries in itertools.product(TASK_KINDS, VariantName, (0, 10))
        if (TASK_KINDS[task], variant) in THRESHOLDS
    ],
)
def test_every_bar_named_was_measured(task: Task, variant: VariantName, n_queries: int) -> None:
    """For every output kind and variant: the note names a bar exactly when that figure was
    computed and the table holds a bar for it."""
    limits = THRESHOLDS[(TASK_KINDS[task], variant)]
    ref = _vectors(d=1 if task in (Task.CLASSIFICATION, Task.RERANKER) else 16)
    v = compare(task, variant, ref, ref.copy(), n_queries)
    thresholds = v.note.split("thresholds: ")[1]
    assert ("cosine >=" in thresholds) == (
        v.cosine_min is not None and limits.min_cosine is not None
    )
    assert ("overlap@10 >=" in thresholds) == (
        v.overlap_at_10 is not None and limits.min_overlap_at_10 is not None
    )
    assert ("max abs diff <=" in thresholds) == (limits.max_abs_diff is not None)
    assert v.passed
