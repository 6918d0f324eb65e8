"""Who produces the outputs validation compares, per task: the PyTorch reference, and the package
run through the runtime exactly as the server runs it (tokenizer, padding, pooling, Dense,
normalization included)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tei_ort.export import reference
from tei_ort.export.recipes import Recipe
from tei_ort.export.source import SourceModel
from tei_ort.export.validate import FloatArray, ValidationSet
from tei_ort.package import Pooling, Task
from tei_ort.runtime import Model


@dataclass(frozen=True)
class Subject:
    """What is being exported: the source, its recipe, and the pooling chosen for embeddings."""

    source: SourceModel
    recipe: Recipe
    task: Task
    pooling: Pooling | None


def _reference_embeddings(subject: Subject, vset: ValidationSet) -> FloatArray:
    assert subject.pooling is not None  # the planner always picks a pooling for embeddings
    return reference.embeddings(subject.source, subject.pooling, vset.texts)


def _reference_sparse(subject: Subject, vset: ValidationSet) -> FloatArray:
    return reference.sparse_embeddings(subject.source, subject.recipe, vset.texts)


def _reference_classification(subject: Subject, vset: ValidationSet) -> FloatArray:
    return reference.logits(subject.source, subject.recipe, vset.texts)


def _reference_rerank(subject: Subject, vset: ValidationSet) -> FloatArray:
    return reference.logits(subject.source, subject.recipe, vset.pairs())[:, :1]  # (pairs, 1)


def _runtime_embeddings(model: Model, vset: ValidationSet) -> FloatArray:
    return model.embed(vset.texts)  # (n, dims), normalized when the model normalizes


def _runtime_sparse(model: Model, vset: ValidationSet) -> FloatArray:
    return model.embed_sparse(vset.texts)  # (n, vocab)


def _runtime_classification(model: Model, vset: ValidationSet) -> FloatArray:
    return model.predict(vset.texts, raw_scores=True)  # (n, num_labels)


def _runtime_rerank(model: Model, vset: ValidationSet) -> FloatArray:
    passages = list(vset.passages[: vset.rerank_passages])
    scores = [
        model.rerank(query, passages, raw_scores=True)  # (passages,)
        for query in vset.queries[: vset.rerank_queries]
    ]
    return np.concatenate(scores)[:, None].astype(np.float32)  # (pairs, 1)


REFERENCE_RUNNERS: dict[Task, Callable[[Subject, ValidationSet], FloatArray]] = {
    Task.EMBEDDING: _reference_embeddings,
    Task.SPARSE_EMBEDDING: _reference_sparse,
    Task.CLASSIFICATION: _reference_classification,
    Task.RERANKER: _reference_rerank,
}
RUNTIME_RUNNERS: dict[Task, Callable[[Model, ValidationSet], FloatArray]] = {
    Task.EMBEDDING: _runtime_embeddings,
    Task.SPARSE_EMBEDDING: _runtime_sparse,
    Task.CLASSIFICATION: _runtime_classification,
    Task.RERANKER: _runtime_rerank,
}


def n_queries(task: Task, vset: ValidationSet) -> int:
    """How many leading rows are retrieval queries (none for classifiers and re-rankers)."""
    return len(vset.queries) if task in (Task.EMBEDDING, Task.SPARSE_EMBEDDING) else 0
