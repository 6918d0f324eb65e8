"""The seam between the HTTP layer (tei_ort.serve) and the engine: what a request asks for and
what comes back. Transport-free: no HTTP, no JSON here.

The serve layer builds one of the `*Request` objects from a parsed body and awaits the matching
`Engine` coroutine; every failure is one of tei_ort.errors' classes, which serve maps to TEI's
status codes in one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tei_ort.tokenization import TruncationDirection

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# A text, or a list of token ids (TEI and OpenAI accept both).
EmbedInput = str | list[int]
# A text, or a (first, second) pair of texts (TEI's /predict).
PredictInput = str | tuple[str, str]


@dataclass(frozen=True)
class Tokenization:
    """Options every tokenizing request carries. `truncate=None` takes the server's
    --auto-truncate."""

    truncate: bool | None = None
    direction: TruncationDirection = TruncationDirection.RIGHT
    prompt_name: str | None = None


@dataclass(frozen=True)
class EmbedRequest:
    inputs: list[EmbedInput]
    tokenization: Tokenization = field(default_factory=Tokenization)
    normalize: bool = True
    dimensions: int | None = None


@dataclass(frozen=True)
class PredictRequest:
    inputs: list[PredictInput]
    tokenization: Tokenization = field(default_factory=Tokenization)
    raw_scores: bool = False


@dataclass(frozen=True)
class RerankRequest:
    query: str
    texts: list[str]
    tokenization: Tokenization = field(default_factory=Tokenization)
    raw_scores: bool = False


@dataclass(frozen=True)
class Metadata:
    """What TEI reports in its x-compute-* / x-*-time headers and in OpenAI's usage."""

    compute_characters: int
    compute_tokens: int
    tokenization_s: float
    queue_s: float
    inference_s: float
    total_s: float
    # Tokens of each input, in input order (TEI's per-input te_request_input_length).
    input_tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class SparseVector:
    indices: IntArray  # (nnz,) ascending
    values: FloatArray  # (nnz,)


@dataclass(frozen=True)
class EmbedResult:
    embeddings: FloatArray  # (n, dimensions), float32
    metadata: Metadata


@dataclass(frozen=True)
class SparseResult:
    vectors: list[SparseVector]
    metadata: Metadata


@dataclass(frozen=True)
class TokenEmbeddingsResult:
    embeddings: list[FloatArray]  # one (len, hidden) per input
    metadata: Metadata


@dataclass(frozen=True)
class PredictResult:
    scores: FloatArray  # (n, num_labels), in label-index order; serve sorts and names them
    metadata: Metadata


@dataclass(frozen=True)
class RerankResult:
    scores: FloatArray  # (n,), in input order; serve sorts and applies top_n
    metadata: Metadata
