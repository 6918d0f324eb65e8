"""Expected values, computed from the fake model directly (not through the server), with the
output steps written out here rather than taken from tei_ort.runtime.outputs, so that a wrong
normalization, Matryoshka cut or activation in the runtime cannot also be the expectation."""

from __future__ import annotations

import numpy as np

from tests.serve.fakes import FakeModel


def embeddings(
    model: FakeModel,
    texts: list[str],
    normalize: bool = True,
    dimensions: int | None = None,
    prompt_name: str | None = None,
) -> np.ndarray:
    vectors = model.forward(model.encode(texts, prompt_name=prompt_name))  # (n, dims)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]  # Matryoshka: the first N, before normalizing
    if normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def scores(model: FakeModel, inputs: list, raw: bool = False) -> np.ndarray:  # type: ignore[type-arg]
    """TEI's rule: raw logits on request, else sigmoid for one label and softmax for several."""
    logits = np.asarray(model.forward(model.encode(inputs)), dtype=np.float64)  # (n, labels)
    if raw:
        return logits
    if logits.shape[1] == 1:
        return 1 / (1 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
