"""OpenAI's embeddings API (POST /v1/embeddings and /embeddings) and GET /v1/models.

The official client asks for base64 unless told otherwise and decodes it as little-endian
float32, so base64 is the hot path here: one bytes copy per vector, no per-float Python."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from tei_ort.engine.types import EmbedRequest, Tokenization
from tei_ort.runtime.quantized_embeddings import EmbeddingType
from tei_ort.serve import embedding_types, schemas
from tei_ort.serve.operations import JsonObject, Operation, ServeContext, validate
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.replies import Reply

logger = logging.getLogger(__name__)

PATHS = ("/v1/embeddings", "/embeddings")
MODELS_PATH = "/v1/models"


class EmbeddingsBody(schemas.Body):
    input: schemas.Input
    model: str | None = Field(
        default=None,
        description="The served model to use (several served: unknown names are 404; one "
        "served: not checked). Default: the first.",
    )
    user: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Matryoshka, then re-normalized.")
    embedding_type: EmbeddingType = Field(
        default=EmbeddingType.FLOAT,
        description=f"{schemas.EMBEDDING_TYPE_HELP} With base64: the int8 / uint8 / bit bytes.",
    )


async def embeddings(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(EmbeddingsBody, body)
    ranges = embedding_types.ranges_for(ctx, req.embedding_type, req.dimensions, normalized=True)
    if req.model is not None and req.model != ctx.served_model_name:
        logger.debug("request names model %r; serving %r", req.model, ctx.served_model_name)
    # As TEI: always normalized, truncation per --auto-truncate on the right, default prompt only.
    result = await ctx.engine.embed(
        EmbedRequest(
            schemas.embed_inputs(req.input),
            Tokenization(),
            normalize=True,
            dimensions=req.dimensions,
        )
    )
    # (n, dimensions) float32 / int8 / uint8, or (n, dimensions / 8) packed bits
    vectors = embedding_types.quantize(result.embeddings, req.embedding_type, ranges)
    encoded: list[object]
    if req.encoding_format == "base64":
        encoded = list(embedding_types.base64_rows(vectors))
    else:
        encoded = list(embedding_types.json_rows(vectors))  # orjson writes each as [number]
    tokens = result.metadata.compute_tokens
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": embedding, "index": index}
            for index, embedding in enumerate(encoded)
        ],
        "model": ctx.served_model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Reply(payload, result.metadata, vectors.size)


def models(registry: ModelRegistry) -> JsonObject:
    return {
        "object": "list",
        "data": [
            {
                "id": ctx.served_model_name,
                "object": "model",
                "created": ctx.created,
                "owned_by": "tei_ort",
            }
            for ctx in registry
        ],
    }


_EXAMPLE = {
    "object": "list",
    "data": [{"object": "embedding", "embedding": [0.0, 0.1], "index": 0}],
    "model": "m",
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}
OPERATIONS: tuple[Operation, ...] = tuple(
    Operation(path, embeddings, EmbeddingsBody, "OpenAI embeddings", "OpenAI", _EXAMPLE)
    for path in PATHS
)
