"""Calibration at export: the real all-MiniLM-L6-v2 package carries int8/uint8 ranges measured on
its fp32 graph, they quantize as sentence-transformers does with the same calibration vectors, and
int8 and binary search keep most of float search's top 10 on texts the ranges never saw."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tei_ort.export import calibration, corpus
from tei_ort.package import Task, write_manifest
from tei_ort.runtime import Model, RuntimeOptions, outputs
from tei_ort.runtime.quantized_embeddings import (
    RANGES_FILE,
    EmbeddingType,
    quantize,
    read_ranges,
)
from tests.serve.fakes import fake_manifest

pytestmark = pytest.mark.slow
quantization = pytest.importorskip("sentence_transformers.util.quantization")
logger = logging.getLogger(__name__)

# Texts after the calibration set's (queries and passages 0-255): the search is judged on texts
# whose vectors did not set the ranges.
EVAL_QUERIES = corpus.queries(200, offset=calibration.CALIBRATION_QUERIES)
EVAL_PASSAGES = corpus.passages(440, offset=calibration.CALIBRATION_PASSAGES)
TOP_K = 10


@pytest.fixture(scope="module")
def minilm(minilm_export: Any) -> Model:
    return Model.load(minilm_export.path, RuntimeOptions(provider="cpu", variant="fp32"))


@pytest.fixture(scope="module")
def calibration_vectors(minilm: Model) -> np.ndarray:
    return minilm.embed(calibration.calibration_texts(), normalize=False)  # (512, 384)


def test_package_carries_the_fp32_graphs_ranges(
    minilm_export: Any, calibration_vectors: np.ndarray
) -> None:
    ranges = read_ranges(minilm_export.path)
    assert ranges is not None
    assert (ranges.texts, ranges.dimensions) == (512, 384)
    assert sorted(ranges.normalized) == list(range(32, 385, 32))
    want_raw = np.vstack((calibration_vectors.min(axis=0), calibration_vectors.max(axis=0)))
    np.testing.assert_allclose(ranges.raw, want_raw, atol=1e-6)
    unit = outputs.normalize(calibration_vectors)
    np.testing.assert_allclose(
        ranges.for_vectors(384, normalized=True),
        np.vstack((unit.min(axis=0), unit.max(axis=0))),
        atol=1e-6,
    )


@pytest.mark.parametrize("precision", ["int8", "uint8"])
@pytest.mark.parametrize("dimensions", [384, 128])
def test_quantizes_as_sentence_transformers(
    minilm_export: Any,
    minilm: Model,
    calibration_vectors: np.ndarray,
    precision: str,
    dimensions: int,
) -> None:
    ranges = read_ranges(minilm_export.path)
    assert ranges is not None
    vectors = minilm.embed(EVAL_QUERIES[:64], normalize=True, dimensions=dimensions)
    # sentence-transformers given the calibration vectors as the server serves them.
    reference = outputs.normalize(calibration_vectors[:, :dimensions])
    want = quantization.quantize_embeddings(vectors, precision, calibration_embeddings=reference)
    got = quantize(
        vectors, EmbeddingType(precision), ranges.for_vectors(dimensions, normalized=True)
    )
    # The package's ranges came from the same graph on the same texts: equal to the last bucket.
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype and len(np.unique(got)) > 100


def _overlap(scores: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of the reference's top 10 (highest scores) found in `scores`' top 10."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    want = np.argsort(-reference, axis=1, kind="stable")[:, :TOP_K]
    return float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(top, want, strict=True)]))


def _hamming_similarity(queries: np.ndarray, passages: np.ndarray) -> np.ndarray:
    """(q, bytes), (p, bytes) ubinary -> (q, p) minus Hamming distance (higher is closer)."""
    differing = np.unpackbits(queries[:, None, :] ^ passages[None, :, :], axis=-1)
    return -differing.sum(axis=-1).astype(np.float32)


def _dequantized(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes back to their buckets' centres in the calibrated ranges."""
    steps = (ranges[1] - ranges[0]) / 255
    return (codes.astype(np.float32) + 128 + 0.5) * steps + ranges[0]


def test_int8_and_binary_search_keep_float_searchs_top_10(
    minilm_export: Any, minilm: Model
) -> None:
    ranges = read_ranges(minilm_export.path)
    assert ranges is not None
    queries = minilm.embed(EVAL_QUERIES, normalize=True)  # (200, 384)
    passages = minilm.embed(EVAL_PASSAGES, normalize=True)  # (440, 384)
    exact = queries @ passages.T  # cosine
    full = ranges.for_vectors(384, normalized=True)
    q8, p8 = (quantize(v, EmbeddingType.INT8, full) for v in (queries, passages))
    # What an int8 index (usearch's i8, as sentence-transformers' int8 search uses) computes: the
    # codes' inner product, each dimension weighted by its calibrated range.
    codes = _overlap((q8.astype(np.int32) @ p8.T.astype(np.int32)).astype(np.float32), exact)
    # The codes read back through the package's ranges: what quantization itself loses.
    centres = _overlap(_dequantized(q8, full) @ _dequantized(p8, full).T, exact)
    qb, pb = (quantize(v, EmbeddingType.UBINARY) for v in (queries, passages))
    binary = _overlap(_hamming_similarity(qb, pb), exact)
    logger.warning(
        "top-%d overlap with float search (%d queries, %d passages): int8 codes' inner product "
        "%.3f, int8 dequantized %.3f, binary Hamming %.3f",
        TOP_K,
        len(EVAL_QUERIES),
        len(EVAL_PASSAGES),
        codes,
        centres,
        binary,
    )
    # Measured 2026-11-30 on an Intel Xeon [x86-amx]: 0.731, 0.979, 0.691 (README).
    assert centres >= 0.95
    assert codes >= 0.65
    assert binary >= 0.6


def test_calibrate_skips_other_tasks_and_removes_stale_ranges(tmp_path: Path) -> None:
    write_manifest(tmp_path, fake_manifest(Task.RERANKER))
    (tmp_path / RANGES_FILE).write_bytes(b"from an earlier export")
    assert calibration.calibrate(tmp_path) is None
    assert not (tmp_path / RANGES_FILE).exists()
