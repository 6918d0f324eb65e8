"""Embedding quantization against sentence-transformers' own quantize_embeddings, value for value,
and the ranges file: written and read back, refused when malformed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tei_ort.errors import PackageError, ValidationError
from tei_ort.runtime import outputs
from tei_ort.runtime.quantized_embeddings import (
    RANGES_FILE,
    EmbeddingRanges,
    EmbeddingType,
    MissingCalibration,
    prefix_sizes,
    quantize,
    read_ranges,
    write_ranges,
)

quantization = pytest.importorskip("sentence_transformers.util.quantization")

QUANTIZED = ("int8", "uint8", "binary", "ubinary")


def _vectors(rows: int, dims: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dims)).astype(np.float32)


@pytest.mark.parametrize("precision", QUANTIZED)
@pytest.mark.parametrize("dims", [384, 100])  # 100: the last packed byte is half padding
def test_equals_sentence_transformers(precision: str, dims: int) -> None:
    calibration = outputs.normalize(_vectors(500, dims, seed=1))
    queries = outputs.normalize(_vectors(50, dims, seed=2))
    queries[0] *= 3  # outside the calibrated range: clipped to the first / last bucket
    ranges = EmbeddingRanges.calibrate(calibration)
    want = quantization.quantize_embeddings(
        queries, precision, calibration_embeddings=outputs.normalize(calibration)
    )
    got = quantize(queries, EmbeddingType(precision), ranges.for_vectors(dims, normalized=True))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if precision.endswith("int8"):
        assert len(np.unique(got)) > 200  # not degenerate: the values spread over the buckets


def test_constant_dimension_and_sign_bits() -> None:
    calibration = _vectors(20, 16, seed=3)
    calibration[:, 5] = 0.25  # a dimension that never varies: ST's step of 1, bucket 0
    vectors = calibration[:4].copy()
    ranges = EmbeddingRanges.calibrate(calibration).raw
    got = quantize(vectors, EmbeddingType.UINT8, ranges)
    np.testing.assert_array_equal(
        got, quantization.quantize_embeddings(vectors, "uint8", ranges=ranges)
    )
    assert (got[:, 5] == 0).all()
    # First value in the high bit, as np.packbits: [+, -, +, ...] -> 0b1010...
    signs = np.array([[1, -1, 1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=np.float32)
    assert quantize(signs, EmbeddingType.UBINARY).tolist() == [[0b10100000, 0xFF]]
    assert quantize(signs, EmbeddingType.BINARY).tolist() == [[0b10100000 - 128, 127]]


def test_prefix_ranges_are_the_renormalized_prefixes() -> None:
    raw = _vectors(300, 96, seed=4) + 0.5
    ranges = EmbeddingRanges.calibrate(raw)
    assert prefix_sizes(96) == (32, 64, 96) and sorted(ranges.normalized) == [32, 64, 96]
    prefix = outputs.normalize(raw[:, :64])
    want = np.vstack((prefix.min(axis=0), prefix.max(axis=0)))
    np.testing.assert_array_equal(ranges.for_vectors(64, normalized=True), want)
    np.testing.assert_array_equal(ranges.for_vectors(40, normalized=False), ranges.raw[:, :40])
    with pytest.raises(ValidationError, match="dimensions=40 needs ranges calibrated"):
        ranges.for_vectors(40, normalized=True)


def test_int8_without_ranges_is_refused() -> None:
    with pytest.raises(MissingCalibration, match="re-export"):
        quantize(_vectors(2, 8, seed=5), EmbeddingType.INT8, None)
    # Sign bits need no calibration.
    assert quantize(_vectors(2, 8, seed=5), EmbeddingType.UBINARY, None).shape == (2, 1)


def test_ranges_file_round_trip_and_malformed(tmp_path: Path) -> None:
    assert read_ranges(tmp_path) is None
    ranges = EmbeddingRanges.calibrate(_vectors(40, 70, seed=6))
    write_ranges(tmp_path, ranges)
    back = read_ranges(tmp_path)
    assert back is not None and back.texts == 40 and back.dimensions == 70
    np.testing.assert_array_equal(back.raw, ranges.raw)
    assert sorted(back.normalized) == [32, 64, 70]
    for size, values in ranges.normalized.items():
        np.testing.assert_array_equal(back.normalized[size], values)
    np.savez(tmp_path / RANGES_FILE, texts=np.int64(1), raw=np.zeros((2, 4), np.float32))
    with pytest.raises(PackageError, match="not a readable ranges file"):
        read_ranges(tmp_path)
    (tmp_path / RANGES_FILE).write_bytes(b"not a zip")
    with pytest.raises(PackageError):
        read_ranges(tmp_path)
