"""Embedding types on the wire, shared by TEI's /embed, OpenAI's embeddings and Cohere's v2 embed:
which calibrated ranges a request needs (checked before the forward pass, so a request the package
cannot answer costs no compute), the quantized arrays, and base64 rows.

Arrays go to orjson as numpy (int8 / uint8 rows are written as JSON integers, in C)."""

from __future__ import annotations

import base64

import numpy as np

from tei_ort.runtime.quantized_embeddings import (
    EmbeddingType,
    FloatArray,
    MissingCalibration,
    quantize,
)
from tei_ort.serve.operations import ServeContext

__all__ = ["EmbeddingType", "base64_rows", "quantize", "ranges_for"]


def ranges_for(
    ctx: ServeContext, embedding_type: EmbeddingType, dimensions: int | None, *, normalized: bool
) -> FloatArray | None:
    """(2, dimensions) ranges for int8 / uint8, None for the other types. Raises before any
    forward pass when the package cannot answer: no ranges at all (424), or none for this
    normalized prefix size (422)."""
    if not embedding_type.needs_ranges:
        return None
    ranges = ctx.embedding_ranges
    if ranges is None:
        raise MissingCalibration()
    size = ranges.dimensions if dimensions is None else dimensions
    if not 0 < size <= ranges.dimensions:
        return None  # out of range: the engine rejects `dimensions`, in TEI's words
    return ranges.for_vectors(size, normalized=normalized)


def base64_rows(vectors: np.ndarray) -> list[str]:
    """One base64 string per row of its bytes: float32 little-endian (what OpenAI's client
    decodes), or the int8 / uint8 / packed-bit bytes as they are."""
    if vectors.dtype.kind == "f":
        vectors = vectors.astype("<f4", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]


def json_rows(vectors: np.ndarray) -> list[np.ndarray]:
    """Rows that orjson writes as JSON arrays ([f32] or [int])."""
    return list(np.ascontiguousarray(vectors))
