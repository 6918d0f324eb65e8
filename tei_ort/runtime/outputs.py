"""What happens to a graph's output after the forward pass: pooling, Dense layers, normalization,
Matryoshka truncation, classifier activations, sparse vectors. Pure numpy, no per-token Python."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tei_ort.errors import ValidationError
from tei_ort.package import Activation, Pooling

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# The poolers take the pooling mask: the attention mask (right padding), with the prompt's
# positions zeroed where a model leaves them out (exclude_prompt). As sentence-transformers'
# Pooling, CLS is then the first pooled token and the last token the last pooled one.


def _pool_cls(hidden: FloatArray, mask: IntArray) -> FloatArray:
    # argmax: the first 1 of each row (0 for a plain attention mask, or a row without any).
    first = np.argmax(mask != 0, axis=1)  # (batch,)
    return hidden[np.arange(hidden.shape[0]), first]


def _pool_mean(hidden: FloatArray, mask: IntArray) -> FloatArray:
    weights = mask[:, :, None].astype(np.float32)  # (batch, seq, 1)
    summed = np.einsum("bsh,bsk->bh", hidden, weights)  # (batch, hidden)
    counts = np.maximum(weights.sum(axis=1), 1e-9)  # (batch, 1)
    return (summed / counts).astype(np.float32)


def _pool_last_token(hidden: FloatArray, mask: IntArray) -> FloatArray:
    pooled = mask != 0  # (batch, seq)
    last = pooled.shape[1] - 1 - np.argmax(pooled[:, ::-1], axis=1)  # (batch,)
    # A row with nothing pooled (its prompt took every token) is zeros, as sentence-transformers.
    rows = hidden[np.arange(hidden.shape[0]), last]
    return np.where(pooled.any(axis=1)[:, None], rows, 0).astype(np.float32)


POOLERS: dict[Pooling, Callable[[FloatArray, IntArray], FloatArray]] = {
    Pooling.CLS: _pool_cls,
    Pooling.MEAN: _pool_mean,
    Pooling.LAST_TOKEN: _pool_last_token,
}


def exclude_prompt(mask: IntArray, prompt_tokens: IntArray) -> IntArray:
    """(batch, seq) attention mask, (batch,) prompt token counts -> the mask with each row's first
    prompt_tokens positions zeroed (sentence-transformers' Pooling with include_prompt=false;
    rows are right-padded, so the prompt starts each row)."""
    positions = np.arange(mask.shape[1])[None, :]  # (1, seq)
    return np.where(positions < prompt_tokens[:, None], 0, mask).astype(np.int64)


def pool(hidden: FloatArray, mask: IntArray, pooling: Pooling) -> FloatArray:
    """(batch, seq, hidden), (batch, seq) -> (batch, hidden)"""
    try:
        pooler = POOLERS[pooling]
    except KeyError as exc:
        raise ValidationError(f"pooling {pooling.value!r} does not apply to hidden states") from exc
    return pooler(hidden.astype(np.float32, copy=False), mask)


_erf = np.vectorize(math.erf, otypes=[np.float32])


def _gelu(x: FloatArray) -> FloatArray:
    # erf-GELU as torch's default; Dense outputs are (batch, out), small enough for math.erf.
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def _softmax(x: FloatArray) -> FloatArray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


ACTIVATIONS: dict[Activation, Callable[[FloatArray], FloatArray]] = {
    Activation.IDENTITY: lambda x: x,
    Activation.TANH: lambda x: np.tanh(x).astype(np.float32),
    Activation.RELU: lambda x: np.maximum(x, 0).astype(np.float32),
    Activation.GELU: _gelu,
    Activation.SIGMOID: lambda x: (1.0 / (1.0 + np.exp(-x))).astype(np.float32),
    Activation.SOFTMAX: _softmax,
}


def dense(
    x: FloatArray, weight: FloatArray, bias: FloatArray | None, activation: Activation
) -> FloatArray:
    """(batch, in) @ (out, in).T + (out,) -> (batch, out), as sentence-transformers' Dense."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return ACTIVATIONS[activation](y.astype(np.float32))


def normalize(x: FloatArray) -> FloatArray:
    """L2-normalize rows; a zero row stays zero (torch.nn.functional.normalize's eps)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def truncate_dimensions(x: FloatArray, dimensions: int | None) -> FloatArray:
    """Matryoshka: keep the first `dimensions` values (the caller normalizes after, not before)."""
    if dimensions is None:
        return x
    full = x.shape[-1]
    if not 0 < dimensions <= full:
        raise ValidationError(f"dimensions must be between 1 and {full}, got {dimensions}")
    return x[..., :dimensions]


def classify(logits: FloatArray, raw_scores: bool) -> FloatArray:
    """TEI's rule: softmax over several labels, sigmoid for a single one; raw logits on request."""
    if raw_scores:
        return logits.astype(np.float32)
    if logits.shape[-1] == 1:
        return ACTIVATIONS[Activation.SIGMOID](logits)
    return _softmax(logits)


def sparse_entries(row: FloatArray) -> tuple[IntArray, FloatArray]:
    """A (vocab,) SPLADE vector -> (indices, values) of its non-zero entries, indices ascending."""
    indices = np.flatnonzero(row > 0)
    return indices.astype(np.int64), row[indices].astype(np.float32)


def sparse_token_weights(
    hidden: FloatArray,
    input_ids: IntArray,
    mask: IntArray,
    head: tuple[FloatArray, FloatArray],
    unused_ids: IntArray,
    vocab: int,
) -> FloatArray:
    """BGE-M3's sparse vectors: relu(hidden @ w.T + b) per token, the largest weight of each
    token id, padding and `unused_ids` (cls, eos, pad, unk) at zero, as FlagEmbedding's BGEM3.
    (batch, seq, hidden), (batch, seq) ids and mask, w (1, hidden), b (1,) -> (batch, vocab)"""
    weight, bias = head
    token = np.maximum(hidden @ weight[0] + bias[0], 0).astype(np.float32)  # (batch, seq)
    token = np.where(mask.astype(bool) & ~np.isin(input_ids, unused_ids), token, 0)
    out = np.zeros((hidden.shape[0], vocab), dtype=np.float32)
    rows = np.broadcast_to(np.arange(hidden.shape[0])[:, None], input_ids.shape)
    np.maximum.at(out, (rows, input_ids), token)  # max over repeats of a token id
    return out


def colbert_vectors(
    hidden: FloatArray, lengths: list[int], head: tuple[FloatArray, FloatArray]
) -> list[FloatArray]:
    """BGE-M3's multi-vectors: each token after the first (CLS), up to the input's length,
    through the ColBERT linear layer and L2-normalized. (batch, seq, hidden) -> per input
    (length - 1, dim)."""
    weight, bias = head
    return [
        normalize((hidden[row, 1:length] @ weight.T + bias).astype(np.float32))
        for row, length in enumerate(lengths)
    ]
