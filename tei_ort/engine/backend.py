"""What the engine needs of a model: the seam between tei_ort.engine and tei_ort.runtime.

`tei_ort.runtime.Model` satisfies this Protocol structurally; tests pass a fake. Only the CLI wires
the concrete class in, so the engine never imports the runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tei_ort.package import Manifest, Task
from tei_ort.tokenization import Encoded, TextInput, Tokenizer, TruncationDirection

FloatArray = npt.NDArray[np.float32]


class ModelBackend(Protocol):
    @property
    def manifest(self) -> Manifest: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def task(self) -> Task: ...

    def prompt(self, prompt_name: str | None) -> str | None:
        """The prompt text for `prompt_name` or the model's default; ValidationError if unknown."""
        ...

    def encode(
        self,
        inputs: Sequence[TextInput],
        *,
        truncate: bool = True,
        direction: TruncationDirection = TruncationDirection.RIGHT,
        prompt_name: str | None = None,
    ) -> list[Encoded]:
        """Texts or pairs -> encodings with special tokens (and the prompt). Thread-safe."""
        ...

    def forward(self, encodings: Sequence[Encoded]) -> FloatArray:
        """One padded forward pass: (batch, dimensions) pooled + Dense, not normalized, for
        embedding models; (batch, vocab) for sparse ones; (batch, num_labels) raw logits for
        classifiers and re-rankers. Row i depends only on encodings[i]."""
        ...

    def forward_tokens(self, encodings: Sequence[Encoded]) -> list[FloatArray]:
        """Per-token hidden states: one (len, hidden) array per encoding."""
        ...

    @property
    def has_sparse_head(self) -> bool:
        """An embedding model that also gives sparse vectors (BGE-M3's sparse_linear)."""
        ...

    def forward_sparse(self, encodings: Sequence[Encoded]) -> FloatArray:
        """(batch, vocab) sparse weights: a SPLADE model's output, or the sparse head's."""
        ...
