"""Fidelity: how a variant's outputs compare with the PyTorch reference on real text, and the bar
each variant must clear. One table of thresholds, used by `tei-export` when it validates a variant
and by the runtime when it re-validates one on a CPU of another class (tei_ort.runtime.fidelity_check).
Numpy only: the serving path imports it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from tei_ort.package import Task, Validation, VariantName

FloatArray = npt.NDArray[np.float32]
TOP_K = 10


class OutputKind(str, enum.Enum):
    DENSE = "dense"  # sentence embeddings (n, dims)
    SPARSE = "sparse"  # SPLADE (n, vocab)
    LOGITS = "logits"  # classifier / re-ranker (n, num_labels)


TASK_KINDS: dict[Task, OutputKind] = {
    Task.EMBEDDING: OutputKind.DENSE,
    Task.SPARSE_EMBEDDING: OutputKind.SPARSE,
    Task.CLASSIFICATION: OutputKind.LOGITS,
    Task.RERANKER: OutputKind.LOGITS,
}


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float | None = None  # every row's cosine to the reference
    # Largest element difference; for logits scaled by max(1, largest |reference logit|), so that
    # a re-ranker scoring in the tens is held to the same relative error as one scoring below 1.
    max_abs_diff: float | None = None
    min_overlap_at_10: float | None = None  # retrieval: mean share of the reference top 10 kept

    def applicable(self, *, cosine: bool, overlap: bool) -> Thresholds:
        """The bars an output can be held to: no cosine for logits, no overlap@10 without both
        queries and passages (classifiers, re-rankers, BGE-M3's ColBERT token rows)."""
        return replace(
            self,
            min_cosine=self.min_cosine if cosine else None,
            min_overlap_at_10=self.min_overlap_at_10 if overlap else None,
        )

    def describe(self, scale: float = 1.0) -> str:
        """The bars as applied; `scale` is the logits' max(1, largest |reference|)."""
        diff = ""
        if self.max_abs_diff is not None:
            diff = f"max abs diff <= {self.max_abs_diff}"
            if scale != 1.0:
                bar = self.max_abs_diff * scale
                diff = f"max abs diff <= {bar:.3g} ({self.max_abs_diff} x {scale:.3g})"
        parts = [
            f"cosine >= {self.min_cosine}" if self.min_cosine is not None else "",
            diff,
            f"overlap@10 >= {self.min_overlap_at_10}" if self.min_overlap_at_10 is not None else "",
        ]
        return ", ".join(p for p in parts if p) or "none"


# fp16 carries ~3 significant digits: cosine 0.999 keeps retrieval intact (overlap checks that);
# bf16 (OpenVINO) is held to the same embedding thresholds.
# int8 thresholds are the issue's: cosine >= 0.995 and overlap@10 >= 0.95 on real text.
THRESHOLDS: dict[tuple[OutputKind, VariantName], Thresholds] = {
    (OutputKind.DENSE, VariantName.FP32): Thresholds(0.99999, 1e-4),
    (OutputKind.DENSE, VariantName.FP16): Thresholds(0.999, None, 0.95),
    (OutputKind.DENSE, VariantName.INT8): Thresholds(0.995, None, 0.95),
    (OutputKind.DENSE, VariantName.INT8_W7): Thresholds(0.995, None, 0.95),
    (OutputKind.DENSE, VariantName.INT8_U8): Thresholds(0.995, None, 0.95),
    (OutputKind.DENSE, VariantName.INT8_WO): Thresholds(0.995, None, 0.95),
    (OutputKind.DENSE, VariantName.BF16): Thresholds(0.999, None, 0.95),
    # SPLADE fp32: the same non-zero terms with values within 1e-3 (a term that is zero on one
    # side and above 1e-3 on the other breaks the max abs diff).
    (OutputKind.SPARSE, VariantName.FP32): Thresholds(None, 1e-3),
    (OutputKind.SPARSE, VariantName.FP16): Thresholds(0.999, None, 0.95),
    (OutputKind.SPARSE, VariantName.INT8): Thresholds(0.995, None, 0.95),
    (OutputKind.SPARSE, VariantName.INT8_W7): Thresholds(0.995, None, 0.95),
    (OutputKind.SPARSE, VariantName.INT8_U8): Thresholds(0.995, None, 0.95),
    (OutputKind.SPARSE, VariantName.INT8_WO): Thresholds(0.995, None, 0.95),
    (OutputKind.SPARSE, VariantName.BF16): Thresholds(0.999, None, 0.95),
    (OutputKind.LOGITS, VariantName.FP32): Thresholds(None, 1e-4),
    (OutputKind.LOGITS, VariantName.FP16): Thresholds(None, 2e-2),
    (OutputKind.LOGITS, VariantName.INT8): Thresholds(None, 1e-1),
    (OutputKind.LOGITS, VariantName.INT8_W7): Thresholds(None, 1e-1),
    (OutputKind.LOGITS, VariantName.INT8_U8): Thresholds(None, 1e-1),
    (OutputKind.LOGITS, VariantName.INT8_WO): Thresholds(None, 1e-1),
    # bf16 keeps 8 bits of mantissa to fp16's 11: ~8x fp16's relative error.
    (OutputKind.LOGITS, VariantName.BF16): Thresholds(None, 5e-2),
}


@dataclass(frozen=True)
class ValidationSet:
    """Short queries and long passages from real prose. Retrieval overlap searches the passages
    with each query; re-rankers score each of the first queries against the first passages."""

    queries: tuple[str, ...]
    passages: tuple[str, ...]
    rerank_queries: int = 8
    rerank_passages: int = 16

    @property
    def texts(self) -> list[str]:
        return [*self.queries, *self.passages]

    def pairs(self) -> list[tuple[str, str]]:
        return [
            (q, p)
            for q in self.queries[: self.rerank_queries]
            for p in self.passages[: self.rerank_passages]
        ]


def n_queries(task: Task, vset: ValidationSet) -> int:
    """How many leading rows are retrieval queries (none for classifiers and re-rankers)."""
    return len(vset.queries) if task in (Task.EMBEDDING, Task.SPARSE_EMBEDDING) else 0


def compare(
    task: Task,
    variant: VariantName,
    reference: FloatArray,
    output: FloatArray,
    n_queries: int,
) -> Validation:
    """Figures and verdict for one variant. `reference` and `output` are (n, d), rows aligned;
    for vector tasks the first `n_queries` rows are queries and the rest passages."""
    kind = TASK_KINDS[task]
    if reference.shape != output.shape:
        return Validation(
            passed=False,
            texts=len(reference),
            note=f"shape {output.shape} differs from the reference {reference.shape}",
        )
    diff = float(np.max(np.abs(reference - output))) if reference.size else 0.0
    scale = max(1.0, float(np.max(np.abs(reference)))) if kind is OutputKind.LOGITS else 1.0
    cosines = row_cosines(reference, output) if kind is not OutputKind.LOGITS else None
    overlap = None
    if kind is not OutputKind.LOGITS and 0 < n_queries < len(reference):
        overlap = overlap_at_k(reference, output, n_queries, cosine=kind is OutputKind.DENSE)
    # Only the bars measured here are applied and named in the note.
    limits = THRESHOLDS[(kind, variant)].applicable(
        cosine=cosines is not None, overlap=overlap is not None
    )
    failures = []
    if limits.min_cosine is not None and cosines is not None and cosines.min() < limits.min_cosine:
        failures.append(f"cosine min {cosines.min():.6f} < {limits.min_cosine}")
    if limits.max_abs_diff is not None and diff > limits.max_abs_diff * scale:
        failures.append(f"max abs diff {diff:.3g} > {limits.max_abs_diff * scale:.3g}")
    if (
        limits.min_overlap_at_10 is not None
        and overlap is not None
        and overlap < limits.min_overlap_at_10
    ):
        failures.append(f"overlap@10 {overlap:.4f} < {limits.min_overlap_at_10}")
    note = f"thresholds: {limits.describe(scale)}"
    if kind is OutputKind.SPARSE:
        note += f"; non-zero term mismatches: {int(np.sum((reference > 0) != (output > 0)))}"
    if failures:
        note = "FAILED " + "; ".join(failures) + "; " + note
    return Validation(
        passed=not failures,
        texts=len(reference),
        cosine_min=None if cosines is None else float(cosines.min()),
        cosine_mean=None if cosines is None else float(cosines.mean()),
        max_abs_diff=diff,
        overlap_at_10=overlap,
        note=note,
    )


def row_cosines(a: FloatArray, b: FloatArray) -> npt.NDArray[np.float64]:
    """(n,) cosine of each row pair; two all-zero rows (an empty SPLADE vector) count as equal."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)  # (n,)
    dots = np.sum(a64 * b64, axis=1)  # (n,)
    both_zero = (np.linalg.norm(a64, axis=1) == 0) & (np.linalg.norm(b64, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    result: npt.NDArray[np.float64] = np.where(both_zero, 1.0, cos)
    return result


def overlap_at_k(
    reference: FloatArray, output: FloatArray, n_queries: int, *, cosine: bool, k: int = TOP_K
) -> float:
    """Mean share of each query's reference top-k passages that the variant also ranks top-k."""
    ref_top = _top_k(reference[:n_queries], reference[n_queries:], cosine, k)  # (queries, k)
    out_top = _top_k(output[:n_queries], output[n_queries:], cosine, k)
    shared = [len(set(r) & set(o)) for r, o in zip(ref_top.tolist(), out_top.tolist(), strict=True)]
    return float(np.mean(shared)) / min(k, reference.shape[0] - n_queries)


def _top_k(queries: FloatArray, passages: FloatArray, cosine: bool, k: int) -> npt.NDArray[np.intp]:
    if cosine:
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        passages = passages / np.maximum(np.linalg.norm(passages, axis=1, keepdims=True), 1e-12)
    scores = queries @ passages.T  # (queries, passages); SPLADE ranks by dot product
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]
