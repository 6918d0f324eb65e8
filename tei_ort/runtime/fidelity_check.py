"""The package's fidelity set: the texts a variant was validated on and the PyTorch reference
outputs for them, so that a variant can be re-validated on the machine that serves it.

Why: ONNX Runtime and OpenVINO pick kernels by CPU features, and int8 is not exact everywhere (on
AVX2 without VNNI, u8s8 GEMMs add pairs of products in saturating int16). all-MiniLM-L6-v2's int8
graph passed at cosine min 0.99877 on an AMX Xeon and failed at 0.99305 on an AVX2 EPYC. So the
figures in the manifest hold for the CPU class they were measured on, and elsewhere the runtime
runs the same texts through the variant exactly as it serves them and applies the same thresholds
(tei_ort.fidelity) before trusting it.

`fidelity.npz` holds plain arrays only (unicode strings and float32), read with
allow_pickle=False: packages come from strangers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tei_ort.errors import PackageError
from tei_ort.fidelity import FloatArray, ValidationSet, compare, n_queries
from tei_ort.package import Task, Validation, VariantName
from tei_ort.runtime.model import Model

FIDELITY_FILE = "fidelity.npz"


@dataclass(frozen=True)
class FidelitySet:
    vset: ValidationSet
    reference: FloatArray  # (n, d): rows as RUNTIME_RUNNERS[task] returns them
    # BGE-M3's token heads ("sparse", "colbert"), rows as HEAD_RUNNERS return them; {} elsewhere.
    heads: Mapping[str, FloatArray] = field(default_factory=dict)


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


# The package run through the runtime exactly as the server runs it (tokenizer, padding, pooling,
# Dense, normalization included); the export's validation uses the same functions.
RUNTIME_RUNNERS: dict[Task, Callable[[Model, ValidationSet], FloatArray]] = {
    Task.EMBEDDING: _runtime_embeddings,
    Task.SPARSE_EMBEDDING: _runtime_sparse,
    Task.CLASSIFICATION: _runtime_classification,
    Task.RERANKER: _runtime_rerank,
}


def _runtime_colbert(model: Model, vset: ValidationSet) -> FloatArray:
    return np.concatenate(model.embed_all(vset.texts))  # (tokens, dim): every text's, in order


# BGE-M3's token heads, each an output users get (/embed_sparse, /embed_all), so each is judged
# beside the pooled vector: the sparse weights with SPLADE's bars (dot-product retrieval over the
# same queries and passages), the ColBERT rows with the dense bars, one row per token.
HEAD_RUNNERS: dict[str, tuple[Task, Callable[[Model, ValidationSet], FloatArray]]] = {
    "sparse": (Task.SPARSE_EMBEDDING, _runtime_sparse),
    "colbert": (Task.EMBEDDING, _runtime_colbert),
}
HEAD_PREFIX = "head_"


def write_fidelity_set(
    package: Path,
    vset: ValidationSet,
    reference: FloatArray,
    heads: Mapping[str, FloatArray] | None = None,
) -> None:
    tmp = package / (FIDELITY_FILE + ".tmp.npz")
    arrays: dict[str, Any] = {
        "queries": np.array(vset.queries, dtype=np.str_),
        "passages": np.array(vset.passages, dtype=np.str_),
        "rerank": np.array([vset.rerank_queries, vset.rerank_passages], dtype=np.int64),
        "reference": np.asarray(reference, dtype=np.float32),
    }
    for name, head_reference in (heads or {}).items():
        arrays[HEAD_PREFIX + name] = np.asarray(head_reference, dtype=np.float32)
    np.savez_compressed(tmp, **arrays)
    tmp.replace(package / FIDELITY_FILE)


def read_fidelity_set(package: Path) -> FidelitySet | None:
    """None when the package has none (exported before tei_ort carried one)."""
    path = package / FIDELITY_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            queries = tuple(str(q) for q in data["queries"])
            passages = tuple(str(p) for p in data["passages"])
            rerank_queries, rerank_passages = (int(x) for x in data["rerank"])
            reference = np.asarray(data["reference"], dtype=np.float32)
            heads = {
                key.removeprefix(HEAD_PREFIX): np.asarray(data[key], dtype=np.float32)
                for key in data.files
                if key.startswith(HEAD_PREFIX)
            }
    except (OSError, KeyError, ValueError) as exc:
        raise PackageError(f"{path}: not a readable fidelity set ({exc})") from exc
    if reference.ndim != 2:
        raise PackageError(f"{path}: the reference must be 2-D, not {reference.shape}")
    unknown = set(heads) - set(HEAD_RUNNERS)
    if unknown:
        raise PackageError(f"{path}: unknown head references {sorted(unknown)}")
    vset = ValidationSet(queries, passages, rerank_queries, rerank_passages)
    return FidelitySet(vset, reference, heads)


def validate_here(
    model: Model, fidelity_set: FidelitySet, *, isa_class: str, engine: str
) -> Validation:
    """Run the fidelity set's texts through `model` as served and judge them with the thresholds
    of the model's variant; the figures record where they were measured."""
    task, vset = model.task, fidelity_set.vset
    variant = VariantName(model.variant.name)
    output = RUNTIME_RUNNERS[task](model, vset)
    validation = compare(task, variant, fidelity_set.reference, output, n_queries(task, vset))
    for name, head_reference in fidelity_set.heads.items():
        head_task, runner = HEAD_RUNNERS[name]
        queries = n_queries(head_task, vset) if head_task is Task.SPARSE_EMBEDDING else 0
        head = compare(head_task, variant, head_reference, runner(model, vset), queries)
        validation = _with_head(validation, name, head)
    return replace(validation, isa_class=isa_class, provider=model.provider.value, engine=engine)


def _with_head(validation: Validation, name: str, head: Validation) -> Validation:
    """The variant passes only when the pooled vector and every head pass; the figures stay the
    pooled vector's, and the note gives each head's."""
    figures = [f"cosine min {head.cosine_min:.6f}" if head.cosine_min is not None else ""]
    figures.append(f"overlap@10 {head.overlap_at_10:.3f}" if head.overlap_at_10 is not None else "")
    figures.append(f"max abs diff {head.max_abs_diff:.3g}" if head.max_abs_diff is not None else "")
    summary = ", ".join(f for f in figures if f)
    note = f"{validation.note}; {name} head ({head.texts} rows): {summary}; {head.note}"
    if not head.passed and validation.passed:
        note = f"FAILED {name} head; {note}"
    return replace(validation, passed=validation.passed and head.passed, note=note)
