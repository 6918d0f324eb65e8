"""The PyTorch reference of BGE-M3's token heads, so that every variant is validated on each
output users get from it, not only on the pooled vector: FlagEmbedding's BGEM3 rules over
transformers' encoder (sparse weights relu(sparse_linear(h)) per token, the largest per token id,
without the cls / eos / pad / unk tokens; ColBERT vectors colbert_linear(h[:, 1:]), L2-normalized,
one row per token after the first). The heads' weights are the package's .npz (m3_heads), the
same numbers as the checkpoint's .pt files, read once through the weights-only check.

The encoder is loaded once: the dense reference is sentence-transformers' own output, and the
heads run on the hidden states of the transformers module that sentence-transformers loaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tei_ort.export import reference
from tei_ort.export.recipes import Recipe
from tei_ort.export.runners import REFERENCE_RUNNERS, Subject
from tei_ort.export.source import SourceModel
from tei_ort.fidelity import FloatArray, ValidationSet
from tei_ort.package import Task, TokenHeads

if TYPE_CHECKING:
    import torch


def references(
    subject: Subject, heads: TokenHeads | None, package: Path, vset: ValidationSet
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """The task's reference on the validation texts and the heads' (head_references), from one
    load of the encoder where the dense reference comes from sentence-transformers."""
    pooling = subject.pooling
    if (
        not _has_heads(heads)
        or subject.task is not Task.EMBEDDING
        or pooling is None
        or subject.recipe.family.own_module is not None  # its dense reference is our module
    ):
        dense = REFERENCE_RUNNERS[subject.task](subject, vset)
        return dense, head_references(subject.source, subject.recipe, heads, package, vset.texts)
    from sentence_transformers.models import Transformer

    model = reference.sentence_transformer(subject.source, pooling)
    dense = reference.encode(model, vset.texts)
    encoder = next(module.auto_model for module in model if isinstance(module, Transformer))
    shared = head_references(
        subject.source, subject.recipe, heads, package, vset.texts, encoder=encoder
    )
    return dense, shared


def head_references(
    source: SourceModel,
    recipe: Recipe,
    heads: TokenHeads | None,
    package: Path,
    texts: Sequence[str],
    encoder: torch.nn.Module | None = None,
) -> dict[str, FloatArray]:
    """{"sparse": (n, vocab), "colbert": (tokens, dim)} for the heads the package has (ColBERT
    rows: every text's tokens after the first, texts in order); {} for every model but BGE-M3.
    `encoder`: transformers' model already loaded for the source; loaded here when None."""
    if heads is None or not _has_heads(heads):
        return {}
    import torch

    if encoder is None:
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(  # transformers' own XLM-RoBERTa: no hub code
            str(source.model_dir), local_files_only=True, trust_remote_code=False
        )
    encoder.eval()
    inputs: list[str | tuple[str, str]] = list(texts)
    order, batches = reference._batches(source, recipe, inputs)
    hidden_rows: list[tuple[np.ndarray, np.ndarray]] = []  # (len, hidden), (len,) ids
    for batch in batches:
        with torch.inference_mode():
            hidden = encoder(**batch).last_hidden_state.float().numpy()  # (b, seq, hidden)
        for row in range(hidden.shape[0]):
            length = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row, :length].numpy()
            hidden_rows.append((hidden[row, :length], ids))
    by_text: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(texts)
    for position, index in enumerate(order):
        by_text[index] = hidden_rows[position]
    rows = [row for row in by_text if row is not None]
    result: dict[str, FloatArray] = {}
    if heads.sparse is not None:
        weight, bias = _linear(package / heads.sparse)
        unused = np.asarray(heads.unused_token_ids, dtype=np.int64)
        result["sparse"] = np.stack(
            [_sparse(h, ids, weight, bias, unused, heads.vocab_size) for h, ids in rows]
        )
    if heads.colbert is not None:
        weight, bias = _linear(package / heads.colbert)
        result["colbert"] = np.concatenate([_colbert(h, weight, bias) for h, _ in rows])
    return result


def _linear(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["weight"].astype(np.float64), data["bias"].astype(np.float64)


def _sparse(
    hidden: np.ndarray,
    ids: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    unused: np.ndarray,
    vocab_size: int,
) -> FloatArray:
    """One text's (vocab,) weights: the largest relu(linear(h)) of each id it holds."""
    weights = np.maximum(hidden.astype(np.float64) @ weight.T + bias, 0.0)[:, 0]  # (len,)
    vector = np.zeros(vocab_size, dtype=np.float64)
    keep = ~np.isin(ids, unused)
    np.maximum.at(vector, ids[keep], weights[keep])
    return vector.astype(np.float32)


def _colbert(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> FloatArray:
    """One text's (len - 1, dim) normalized multi-vectors."""
    vectors = hidden[1:].astype(np.float64) @ weight.T + bias
    norms = np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return (vectors / norms).astype(np.float32)


def _has_heads(heads: TokenHeads | None) -> bool:
    return heads is not None and (heads.sparse is not None or heads.colbert is not None)
