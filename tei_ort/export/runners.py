"""The PyTorch reference outputs validation compares with, per task. The package's side, run
through the runtime as the server runs it, is tei_ort.runtime.calibration.RUNTIME_RUNNERS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tei_ort.export import reference
from tei_ort.export.recipes import Recipe
from tei_ort.export.source import SourceModel
from tei_ort.fidelity import FloatArray, ValidationSet
from tei_ort.package import Pooling, Task


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


REFERENCE_RUNNERS: dict[Task, Callable[[Subject, ValidationSet], FloatArray]] = {
    Task.EMBEDDING: _reference_embeddings,
    Task.SPARSE_EMBEDDING: _reference_sparse,
    Task.CLASSIFICATION: _reference_classification,
    Task.RERANKER: _reference_rerank,
}
