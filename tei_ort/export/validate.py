"""Validation at export: the thresholds and comparison live in tei_ort.fidelity (the runtime
re-validates with them too); this module picks the texts, from the offline corpus."""

from __future__ import annotations

from tei_ort.export import corpus
from tei_ort.fidelity import (
    THRESHOLDS,
    FloatArray,
    OutputKind,
    Thresholds,
    ValidationSet,
    compare,
    n_queries,
    overlap_at_k,
    row_cosines,
)

__all__ = [
    "THRESHOLDS",
    "FloatArray",
    "OutputKind",
    "Thresholds",
    "ValidationSet",
    "compare",
    "n_queries",
    "overlap_at_k",
    "row_cosines",
    "validation_set",
]


def validation_set(queries: int = 64, passages: int = 192) -> ValidationSet:
    return ValidationSet(tuple(corpus.queries(queries)), tuple(corpus.passages(passages)))
