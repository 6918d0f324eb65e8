from __future__ import annotations

import pytest

from tei_ort.export import corpus


def test_paragraphs_are_prose_and_stable() -> None:
    paragraphs = corpus.paragraphs()
    assert len(paragraphs) > 500
    assert len(set(paragraphs)) == len(paragraphs)
    assert all("\n" not in p and "  " not in p for p in paragraphs)
    assert corpus.paragraphs() == paragraphs


def test_queries_are_short_and_passages_long() -> None:
    queries, passages = corpus.queries(50), corpus.passages(50)
    assert all(3 <= len(q.split()) <= 12 for q in queries)
    assert all(len(p) >= 80 for p in passages)
    assert corpus.passages(5, offset=10) == corpus.passages(15)[10:]


def test_mixed_interleaves() -> None:
    mixed = corpus.mixed(10)
    assert mixed[0::2] == corpus.queries(5) and mixed[1::2] == corpus.passages(5)


def test_asking_for_too_many_is_an_error() -> None:
    with pytest.raises(ValueError, match="the corpus has"):
        corpus.passages(100_000)
