"""Embedding types smaller than float32, as sentence-transformers' `quantize_embeddings` makes
them: int8 / uint8 put each dimension's calibrated [min, max] into 256 buckets; binary / ubinary
keep the sign bit of each value, packed eight to a byte (`np.packbits`, first value in the high
bit), binary shifted by -128 into int8.

The ranges come from the package's `embedding_ranges.npz`, written at export from the fp32 graph
on the calibration texts (tei_ort.export.calibration). A vector's range depends on what was done to
it: an unnormalized vector (normalize=false) is the raw output, and its first k values keep the raw
ranges; a normalized Matryoshka prefix is rescaled by its own norm, so its ranges are calibrated per
prefix size (every multiple of PREFIX_STEP and the full size). Read without pickle."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tei_ort.errors import PackageError, ValidationError, WrongModelType

FloatArray = npt.NDArray[np.float32]
RANGES_FILE = "embedding_ranges.npz"
# Normalized prefixes are calibrated at every multiple of this size (Matryoshka models and
# Cohere's output_dimension use multiples of 32: 64, 128, 256, 512, 768, 1024, 1536).
PREFIX_STEP = 32
# int8 / uint8 buckets per dimension.
LEVELS = 255


class EmbeddingType(str, enum.Enum):
    FLOAT = "float"
    INT8 = "int8"
    UINT8 = "uint8"
    BINARY = "binary"
    UBINARY = "ubinary"

    @property
    def needs_ranges(self) -> bool:
        return self in (EmbeddingType.INT8, EmbeddingType.UINT8)


class MissingCalibration(WrongModelType):
    """int8 / uint8 asked of a package without calibrated ranges: the model cannot answer it, as
    with a route that does not fit the model (424 in TEI's table)."""

    def __init__(self) -> None:
        super().__init__(
            "int8/uint8 embeddings need ranges calibrated at export, and this model package has "
            f"none ({RANGES_FILE}); re-export it with this tei-export, or ask for float, binary "
            "or ubinary"
        )


def prefix_sizes(dimensions: int) -> tuple[int, ...]:
    """Prefix sizes whose normalized ranges are calibrated: 32, 64, ... below `dimensions`, and
    `dimensions` itself."""
    return (*range(PREFIX_STEP, dimensions, PREFIX_STEP), dimensions)


def _min_max(vectors: FloatArray) -> FloatArray:
    """(n, d) -> (2, d): per-dimension minimum and maximum, sentence-transformers' `ranges`."""
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0))).astype(np.float32)


def _normalize(vectors: FloatArray) -> FloatArray:
    # As tei_ort.runtime.outputs.normalize (the served vectors), so the ranges fit them exactly.
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class EmbeddingRanges:
    texts: int  # how many calibration texts the ranges were measured on
    raw: FloatArray  # (2, dimensions): min and max of each value of the unnormalized vectors
    normalized: dict[int, FloatArray]  # prefix size k -> (2, k), of the normalized first k values

    @classmethod
    def calibrate(cls, raw_vectors: FloatArray) -> EmbeddingRanges:
        """From (n, dimensions) unnormalized vectors (pooled + Dense, as the graph serves them)."""
        if raw_vectors.ndim != 2 or raw_vectors.shape[0] == 0:
            raise ValueError(f"calibration needs (n, dimensions) vectors, got {raw_vectors.shape}")
        sizes = prefix_sizes(raw_vectors.shape[1])
        return cls(
            texts=raw_vectors.shape[0],
            raw=_min_max(raw_vectors),
            normalized={k: _min_max(_normalize(raw_vectors[:, :k])) for k in sizes},
        )

    @property
    def dimensions(self) -> int:
        return int(self.raw.shape[1])

    def for_vectors(self, dimensions: int, *, normalized: bool) -> FloatArray:
        """(2, dimensions): the ranges of vectors served with these options."""
        if not 0 < dimensions <= self.dimensions:
            raise ValidationError(
                f"int8/uint8: the ranges cover {self.dimensions} dimensions, not {dimensions}"
            )
        if not normalized:
            return self.raw[:, :dimensions]
        ranges = self.normalized.get(dimensions)
        if ranges is None:
            raise ValidationError(
                f"int8/uint8 with dimensions={dimensions} needs ranges calibrated at that size; "
                f"this package has them at multiples of {PREFIX_STEP} and at {self.dimensions} "
                "(or at any size with normalize=false)"
            )
        return ranges


def _buckets(vectors: FloatArray, ranges: FloatArray) -> FloatArray:
    """(n, d) float -> (n, d) bucket numbers 0..255, as floats; sentence-transformers' arithmetic
    in the same dtype (float32), so that the integers agree with it exactly."""
    starts = ranges[0]
    steps = (ranges[1] - ranges[0]) / LEVELS
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: every value in bucket 0
    return np.clip(np.floor((vectors - starts) / steps), 0, LEVELS)


def _sign_bits(vectors: FloatArray) -> npt.NDArray[np.uint8]:
    return np.packbits(vectors > 0, axis=-1)  # (n, ceil(d / 8))


Quantizer = Callable[[FloatArray, FloatArray | None], np.ndarray]
_QUANTIZERS: dict[EmbeddingType, Quantizer] = {
    EmbeddingType.FLOAT: lambda v, r: v,
    EmbeddingType.UINT8: lambda v, r: _buckets(v, _required(r)).astype(np.uint8),
    EmbeddingType.INT8: lambda v, r: (_buckets(v, _required(r)) - 128).astype(np.int8),
    EmbeddingType.UBINARY: lambda v, r: _sign_bits(v),
    EmbeddingType.BINARY: lambda v, r: (_sign_bits(v).astype(np.int16) - 128).astype(np.int8),
}


def _required(ranges: FloatArray | None) -> FloatArray:
    if ranges is None:
        raise MissingCalibration()
    return ranges


def quantize(
    vectors: FloatArray, embedding_type: EmbeddingType, ranges: FloatArray | None = None
) -> np.ndarray:
    """(n, d) float32 -> (n, d) float32 / int8 / uint8, or (n, ceil(d / 8)) packed bits.
    `ranges` is (2, d), needed for int8 and uint8 only."""
    return _QUANTIZERS[embedding_type](vectors, ranges)


def write_ranges(package: Path, ranges: EmbeddingRanges) -> None:
    sizes = sorted(ranges.normalized)
    tmp = package / (RANGES_FILE + ".tmp.npz")
    np.savez(
        tmp,
        texts=np.int64(ranges.texts),
        raw=ranges.raw,
        sizes=np.array(sizes, dtype=np.int64),
        # One (2, sum(sizes)) array, the prefixes side by side in `sizes` order.
        normalized=np.concatenate([ranges.normalized[k] for k in sizes], axis=1),
    )
    tmp.replace(package / RANGES_FILE)


def read_ranges(package: Path) -> EmbeddingRanges | None:
    """None when the package has none (not an embedding model, or exported before calibration)."""
    path = package / RANGES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            texts = int(data["texts"])
            raw = np.asarray(data["raw"], dtype=np.float32)
            sizes = [int(k) for k in data["sizes"]]
            packed = np.asarray(data["normalized"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise PackageError(f"{path}: not a readable ranges file ({exc})") from exc
    if raw.ndim != 2 or raw.shape[0] != 2 or packed.shape != (2, sum(sizes)):
        raise PackageError(f"{path}: malformed (raw {raw.shape}, normalized {packed.shape})")
    offsets = np.cumsum([0, *sizes])
    normalized = {k: packed[:, offsets[i] : offsets[i + 1]] for i, k in enumerate(sizes)}
    return EmbeddingRanges(texts, raw, normalized)
