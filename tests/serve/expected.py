"""Expected values, computed from the fake model directly (not through the server)."""

from __future__ import annotations

import numpy as np

from tei_ort.runtime import outputs
from tests.serve.fakes import FakeModel


def embeddings(
    model: FakeModel,
    texts: list[str],
    normalize: bool = True,
    dimensions: int | None = None,
    prompt_name: str | None = None,
) -> np.ndarray:
    vectors = outputs.truncate_dimensions(
        model.forward(model.encode(texts, prompt_name=prompt_name)), dimensions
    )
    return outputs.normalize(vectors) if normalize else vectors


def scores(model: FakeModel, inputs: list, raw: bool = False) -> np.ndarray:  # type: ignore[type-arg]
    return outputs.classify(model.forward(model.encode(inputs)), raw)
