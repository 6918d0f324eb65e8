"""Cohere's v2 embed API (POST /v2/embed): `texts`, `input_type` mapped to the model's prompts,
several `embedding_types` at once (float, int8, uint8, binary, ubinary, base64),
`output_dimension` (Matryoshka) and `truncate` (NONE, START, END). The answer is Cohere's
`embeddings_by_type` shape; errors are Cohere's `{"message": ...}` body. Vectors are normalized,
as Cohere's are."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from tei_ort.engine.types import EmbedRequest, Tokenization
from tei_ort.errors import ValidationError
from tei_ort.serve import embedding_types, errors, schemas
from tei_ort.serve.embedding_types import EmbeddingType
from tei_ort.serve.operations import JsonObject, Operation, ServeContext, validate
from tei_ort.serve.replies import Reply
from tei_ort.tokenization import TruncationDirection

PATHS = ("/v2/embed",)
BASE64 = "base64"  # Cohere's sixth type: the float32 vector's bytes, base64-encoded

# Cohere's input_type -> the model prompt names that mean it, first found wins; none found: the
# model's default prompt (a model without prompts embeds every type alike).
PROMPT_NAMES: dict[str, tuple[str, ...]] = {
    "search_query": ("search_query", "query", "retrieval.query"),
    "search_document": ("search_document", "document", "passage", "corpus", "retrieval.passage"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}
# Cohere's truncate -> (truncate, direction); END is Cohere's default.
TRUNCATION: dict[str, tuple[bool, TruncationDirection]] = {
    "NONE": (False, TruncationDirection.RIGHT),
    "START": (True, TruncationDirection.LEFT),
    "END": (True, TruncationDirection.RIGHT),
}


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


CohereType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class CohereEmbedBody(schemas.Body):
    model: str | None = Field(default=None, description=schemas.MODEL_HELP)
    texts: list[str] | None = None
    input_type: (
        Literal["search_query", "search_document", "classification", "clustering", "image"] | None
    ) = Field(default=None, description="Mapped to the model's prompt of that name.")
    embedding_types: list[CohereType] = Field(default=["float"], min_length=1)
    output_dimension: int | None = Field(default=None, description="Matryoshka, re-normalized.")
    truncate: Annotated[Literal["NONE", "START", "END"], BeforeValidator(_upper)] = "END"
    max_tokens: int | None = Field(
        default=None, ge=1, description="Accepted when at least the model's maximum input length."
    )
    images: list[str] | None = Field(default=None, description="Not supported: a text model.")
    inputs: list[object] | None = Field(default=None, description="Not supported: use `texts`.")


def prompt_name(ctx: ServeContext, input_type: str | None) -> str | None:
    prompts = ctx.engine.model.manifest.prompts
    names = PROMPT_NAMES.get(input_type or "", ())
    return next((name for name in names if name in prompts), None)


def _check(ctx: ServeContext, req: CohereEmbedBody) -> list[str]:
    if req.images or req.inputs or req.input_type == "image":
        raise ValidationError("only `texts` can be embedded: this is a text embedding model")
    if req.texts is None:
        raise ValidationError("`texts` is required")
    longest = ctx.engine.model.manifest.max_input_length
    if req.max_tokens is not None and req.max_tokens < longest:
        raise ValidationError(
            f"max_tokens below the model's maximum input length ({longest}) is not supported; "
            "use `truncate`"
        )
    return req.texts


async def embed(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(CohereEmbedBody, body)
    texts = _check(ctx, req)
    kinds = list(dict.fromkeys(req.embedding_types))  # Cohere answers each type once
    ranges = {
        kind: embedding_types.ranges_for(
            ctx, EmbeddingType(kind), req.output_dimension, normalized=True
        )
        for kind in kinds
        if kind != BASE64
    }
    truncate, direction = TRUNCATION[req.truncate]
    result = await ctx.engine.embed(
        EmbedRequest(
            list(texts),
            Tokenization(truncate, direction, prompt_name(ctx, req.input_type)),
            normalize=True,
            dimensions=req.output_dimension,
        )
    )
    vectors = result.embeddings  # (n, dimensions) float32, unit length
    by_type: JsonObject = {}
    for kind in kinds:
        if kind == BASE64:
            by_type[kind] = embedding_types.base64_rows(vectors)
        else:
            quantized = embedding_types.quantize(vectors, EmbeddingType(kind), ranges[kind])
            by_type[kind] = embedding_types.json_rows(quantized)
    payload = {
        "id": str(uuid.uuid4()),
        "embeddings": by_type,
        "texts": texts,
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"input_tokens": result.metadata.compute_tokens},
        },
        "response_type": "embeddings_by_type",
    }
    return Reply(payload, result.metadata, vectors.size * len(kinds))


def error_body(exc: BaseException) -> tuple[int, dict[str, object]]:
    """Cohere's error body: `{"message": ...}`, with TEI's status for the error."""
    kind = errors.classify(exc)
    return kind.status, {"message": errors.message(exc, kind)}


ERROR_SCHEMA: JsonObject = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}
_EXAMPLE = {
    "id": "5807ee2e-0cda-445a-9ec8-864c60a06606",
    "embeddings": {"float": [[0.01, -0.02]], "int8": [[12, -40]], "ubinary": [[151]]},
    "texts": ["hello"],
    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 3}},
    "response_type": "embeddings_by_type",
}
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v2/embed",
        embed,
        CohereEmbedBody,
        "Cohere embed v2 (float, int8, uint8, binary, ubinary, base64)",
        "Cohere",
        _EXAMPLE,
        error_schema=ERROR_SCHEMA,
    ),
)
