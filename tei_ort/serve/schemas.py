"""Request bodies of TEI's native routes, as pydantic models (the edge of the system). Unknown
fields are ignored, as TEI's serde structs ignore them (clients send `parameters`, `options`,
`model`...). The same models generate the OpenAPI document."""

from __future__ import annotations

from typing import Annotated

import pydantic
from pydantic import BeforeValidator, Field

from tei_ort.engine.types import EmbedInput, PredictInput, Tokenization
from tei_ort.errors import EmptyInput, ValidationError
from tei_ort.runtime.quantized_embeddings import EmbeddingType
from tei_ort.tokenization import TruncationDirection

TokenId = Annotated[int, Field(ge=0, le=2**32 - 1)]
TokenIds = list[TokenId]
# TEI's untagged `Input`: a text, token ids, or a batch of either.
Input = str | TokenIds | list[str | TokenIds]


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


EMBEDDING_TYPE_HELP = (
    "Ours: int8 / uint8 (each dimension scaled by ranges calibrated at export), binary / ubinary "
    "(sign bits packed eight to a byte), as sentence-transformers' quantize_embeddings."
)

# "Left", "RIGHT" and "right" are all fine (LiteLLM and Milvus send capitalised names).
Direction = Annotated[TruncationDirection, BeforeValidator(_lower)]


class Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


MODEL_HELP = (
    "The served model to use, by its served name (several served: an unknown name is a 404; one "
    "served: not checked, as TEI). Default: the first --model-id."
)


class Routed(Body):
    """A top-level body: the app routes it by `model` (tei_ort/serve/registry.py)."""

    model: str | None = Field(default=None, description=MODEL_HELP)


class Truncation(Body):
    truncate: bool | None = Field(
        default=None, description="Default: the server's --auto-truncate."
    )
    truncation_direction: Direction = TruncationDirection.RIGHT

    def tokenization(self, prompt_name: str | None = None) -> Tokenization:
        return Tokenization(self.truncate, self.truncation_direction, prompt_name)


class EmbedBody(Truncation, Routed):
    inputs: Input
    prompt_name: str | None = None
    normalize: bool = True
    dimensions: int | None = Field(default=None, description="Matryoshka: keep the first N.")
    embedding_type: EmbeddingType = Field(
        default=EmbeddingType.FLOAT, description=EMBEDDING_TYPE_HELP
    )


class EmbedAllBody(Truncation, Routed):
    inputs: Input
    prompt_name: str | None = None


class PredictBody(Truncation, Routed):
    inputs: str | list[str] | list[list[str]] = Field(
        description="A text, a [text, text] pair, or a batch of [text] / [text, text]."
    )
    raw_scores: bool = False


class RerankBody(Truncation, Routed):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    top_n: int | None = Field(default=None, ge=1, description="Ours: keep the N best.")


class SimilarityInputs(Body):
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(Truncation):
    prompt_name: str | None = None


class SimilarityBody(Routed):
    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = None


class TokenizeBody(Routed):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class DecodeBody(Routed):
    ids: TokenIds | list[TokenIds]
    skip_special_tokens: bool = True


def embed_inputs(inputs: Input) -> list[EmbedInput]:
    """One text or one id list is a batch of one; `[]` is an empty batch (400), not empty ids."""
    if isinstance(inputs, str):
        return [inputs]
    if not inputs:
        return []
    if all(isinstance(item, int) for item in inputs):
        return [list(inputs)]  # type: ignore[arg-type]  # narrowed by the check above
    return list(inputs)  # type: ignore[arg-type]  # a batch: each item a str or an id list


def decode_ids(ids: TokenIds | list[TokenIds]) -> list[list[int]]:
    """One id list is a batch of one; `[]` is an empty batch (400)."""
    if ids and all(isinstance(i, int) for i in ids):
        return [list(ids)]  # type: ignore[arg-type]  # narrowed by the check above
    return [list(seq) for seq in ids]  # type: ignore[arg-type]  # a batch of id lists


def predict_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[list[PredictInput], bool]:
    """TEI's PredictInput: (inputs, is_batch). A list of one or two strings is one input (a pair
    when two); a list of such lists is a batch."""
    if isinstance(inputs, str):
        return [inputs], False
    if not inputs:
        raise EmptyInput("`inputs` cannot be empty")
    if all(isinstance(item, str) for item in inputs):
        return [_sequence(inputs)], False  # type: ignore[arg-type]  # narrowed above
    return [_sequence(item) for item in inputs], True  # type: ignore[arg-type]  # list[list[str]]


def _sequence(texts: list[str]) -> PredictInput:
    if len(texts) == 1:
        return texts[0]
    if len(texts) == 2:
        return (texts[0], texts[1])
    raise ValidationError(
        f"a predict input is [text] or [text, text]; got a list of {len(texts)} texts"
    )
