"""The comparison itself, on synthetic arrays with known answers."""

from __future__ import annotations

import numpy as np

from tei_ort.export.validate import compare, overlap_at_k, row_cosines
from tei_ort.package import Task, VariantName


def _vectors(n: int = 40, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_identical_embeddings_pass_with_perfect_figures() -> None:
    ref = _vectors()
    v = compare(Task.EMBEDDING, VariantName.FP32, ref, ref.copy(), n_queries=10)
    assert v.passed and v.texts == 40
    assert v.cosine_min is not None and v.cosine_min > 0.999999
    assert v.max_abs_diff == 0.0 and v.overlap_at_10 == 1.0


def test_small_noise_fails_fp32_but_passes_int8() -> None:
    ref = _vectors()
    noisy = ref + 1e-3 * _vectors(seed=1)  # cosine ~0.999999, diff ~4e-3
    fp32 = compare(Task.EMBEDDING, VariantName.FP32, ref, noisy, n_queries=10)
    assert not fp32.passed and "max abs diff" in fp32.note and fp32.note.startswith("FAILED")
    int8 = compare(Task.EMBEDDING, VariantName.INT8, ref, noisy, n_queries=10)
    assert int8.passed


def test_shape_mismatch_fails() -> None:
    v = compare(Task.EMBEDDING, VariantName.FP32, _vectors(d=16), _vectors(d=8), n_queries=10)
    assert not v.passed and "shape" in v.note


def test_logit_tolerance_scales_with_the_logits() -> None:
    ref = np.array([[20.0], [-15.0]], dtype=np.float32)
    assert compare(
        Task.RERANKER, VariantName.FP16, ref, ref + 0.3, n_queries=0
    ).passed  # 0.3 <= 0.02*20
    assert not compare(
        Task.RERANKER, VariantName.FP16, ref / 100, ref / 100 + 0.03, n_queries=0
    ).passed
    v = compare(Task.CLASSIFICATION, VariantName.FP32, ref, ref + 5e-5, n_queries=0)
    assert v.cosine_min is None and v.overlap_at_10 is None


def test_sparse_counts_non_zero_mismatches() -> None:
    ref = np.zeros((4, 50), dtype=np.float32)
    ref[:, :5] = 1.0
    out = ref.copy()
    out[0, 10] = 5e-4  # a new term, tiny: fp32 still passes
    v = compare(Task.SPARSE_EMBEDDING, VariantName.FP32, ref, out, n_queries=0)
    assert v.passed and "non-zero term mismatches: 1" in v.note
    out[1, 11] = 0.5
    assert not compare(Task.SPARSE_EMBEDDING, VariantName.FP32, ref, out, n_queries=0).passed


def test_row_cosines_treats_two_zero_rows_as_equal() -> None:
    a = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    b = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(row_cosines(a, b), [1.0, 0.0, 0.0])


def test_overlap_at_k_counts_shared_neighbours() -> None:
    queries = np.eye(2, 12, dtype=np.float32)  # query i points at passage i
    passages = np.eye(12, dtype=np.float32) + 0.01
    ref = np.vstack([queries, passages])
    assert overlap_at_k(ref, ref, n_queries=2, cosine=True) == 1.0
    swapped = ref.copy()
    swapped[2:] = swapped[2:][::-1]  # the variant returns entirely different top passages... mostly
    assert overlap_at_k(ref, swapped, n_queries=2, cosine=True, k=1) == 0.0
