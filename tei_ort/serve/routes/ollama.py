"""Ollama's embedding API: POST /api/embed (`input` a string or a list, `truncate`, `dimensions`;
normalized vectors) and the older POST /api/embeddings (`prompt`, one vector as the model makes
it). As Ollama: an empty input answers no vectors (Ollama's way to load a model), `dimensions`
outside 1..size-1 leaves the vector whole, `keep_alive` and `options` are accepted (the model stays
loaded; runner options have no meaning here), and errors are `{"error": ...}` with 400 for a bad
request."""

from __future__ import annotations

from pydantic import Field

from tei_ort.engine.types import EmbedRequest, Tokenization
from tei_ort.serve import errors, schemas
from tei_ort.serve.operations import JsonObject, Operation, ServeContext, validate
from tei_ort.serve.replies import Reply

PATHS = ("/api/embed", "/api/embeddings")
_NS = 1_000_000_000
# Ollama answers every invalid request with 400 (TEI: 422).
_OLLAMA_STATUS = {422: 400}


class OllamaEmbedBody(schemas.Body):
    model: str | None = Field(default=None, description=schemas.MODEL_HELP)
    input: str | list[str] | None = None
    truncate: bool = Field(default=True, description="false: too long an input is an error.")
    dimensions: int | None = Field(default=None, description="Matryoshka, re-normalized.")
    keep_alive: float | str | None = Field(default=None, description="Accepted; no effect.")
    options: dict[str, object] | None = Field(default=None, description="Accepted; no effect.")


class OllamaEmbeddingsBody(schemas.Body):
    model: str | None = None
    prompt: str | None = None
    keep_alive: float | str | None = Field(default=None, description="Accepted; no effect.")
    options: dict[str, object] | None = Field(default=None, description="Accepted; no effect.")


def _texts(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return ([value] if value else []) if isinstance(value, str) else value


def _dimensions(requested: int | None, size: int) -> int | None:
    # Ollama truncates only when 0 < dimensions < size, and ignores any other value.
    return requested if requested is not None and 0 < requested < size else None


async def embed(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(OllamaEmbedBody, body)
    model = req.model or ctx.served_model_name
    texts = _texts(req.input)
    if not texts:
        return Reply({"model": model, "embeddings": []})
    size = ctx.engine.model.manifest.dimensions
    result = await ctx.engine.embed(
        EmbedRequest(
            list(texts),
            Tokenization(truncate=req.truncate),
            normalize=True,
            dimensions=_dimensions(req.dimensions, size),
        )
    )
    metadata = result.metadata
    payload = {
        "model": model,
        "embeddings": result.embeddings,  # (n, dimensions) float32: [[f32]]
        "total_duration": int(metadata.total_s * _NS),
        "load_duration": 0,  # the model is loaded before the server listens
        "prompt_eval_count": metadata.compute_tokens,
    }
    return Reply(payload, metadata, result.embeddings.size)


async def embeddings(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(OllamaEmbeddingsBody, body)
    if not req.prompt:
        return Reply({"embedding": []})
    # The model's own output: normalized only when the model ends in a Normalize module.
    result = await ctx.engine.embed(
        EmbedRequest([req.prompt], normalize=ctx.engine.model.manifest.normalize)
    )
    return Reply({"embedding": result.embeddings[0]}, result.metadata, result.embeddings.size)


def error_body(exc: BaseException) -> tuple[int, dict[str, object]]:
    """Ollama's error body, `{"error": ...}`; the ollama client raises ResponseError with it."""
    kind = errors.classify(exc)
    return _OLLAMA_STATUS.get(kind.status, kind.status), {"error": errors.message(exc, kind)}


ERROR_SCHEMA: JsonObject = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/api/embed",
        embed,
        OllamaEmbedBody,
        "Ollama embed",
        "Ollama",
        {"model": "m", "embeddings": [[0.01, -0.02]], "total_duration": 1, "prompt_eval_count": 3},
        error_schema=ERROR_SCHEMA,
    ),
    Operation(
        "/api/embeddings",
        embeddings,
        OllamaEmbeddingsBody,
        "Ollama embeddings (older API)",
        "Ollama",
        {"embedding": [0.01, -0.02]},
        error_schema=ERROR_SCHEMA,
    ),
)
