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
    "SHORT_QUERIES",
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

# One to three tokens each: what users type into a search box, and what int8 got wrong while
# the set held prose alone (issue 9: MiniLM's int8-w7 at cosine 0.977 on "!!", its manifest
# saying it passed). Punctuation, a word, a number, an emoji (an unknown token to most
# vocabularies), a pair of words. They follow the prose queries, so the re-ranker pairs (the
# first queries) stay real questions.
SHORT_QUERIES = (
    "?",
    "!!",
    "x",
    "I",
    "a",
    ".",
    "ok",
    "OK!",
    "hi",
    "no",
    "yes please",
    "thanks",
    "fine thanks",
    "why?",
    "sure",
    "42",
    "3.14",
    "2024",
    "\N{SLIGHTLY SMILING FACE}",
    "hello world",
)


def validation_set(queries: int = 64, passages: int = 192) -> ValidationSet:
    """`queries` prose queries, then SHORT_QUERIES, then `passages` passages."""
    return ValidationSet(
        (*corpus.queries(queries), *SHORT_QUERIES), tuple(corpus.passages(passages))
    )
