"""Ordering re-rank scores, shared by TEI's /rerank and the Cohere/Jina routes."""

from __future__ import annotations

import numpy as np

from tei_ort.engine.types import FloatArray


def rank(scores: FloatArray, top_n: int | None) -> list[int]:
    """(n,) scores -> indices, best first; ties keep input order; `top_n` keeps the first N."""
    order: list[int] = np.argsort(-scores, kind="stable").tolist()
    return order if top_n is None else order[:top_n]
