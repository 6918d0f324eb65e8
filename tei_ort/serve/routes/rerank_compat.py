"""Cohere (POST /v2/rerank) and Jina (POST /v1/rerank) re-ranking, plus Infinity's Cohere-shaped
body on TEI's /rerank. Documents may be strings or {text} objects; results carry `index` and
`relevance_score`, best first, cut to `top_n`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from tei_ort.engine.types import RerankRequest, Tokenization
from tei_ort.serve import schemas
from tei_ort.serve.operations import JsonObject, Operation, ServeContext, validate
from tei_ort.serve.ranking import rank
from tei_ort.serve.replies import Reply


class Document(schemas.Body):
    text: str


class CompatRerankBody(schemas.Body):
    model: str | None = None
    query: str
    documents: list[str | Document]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool | None = Field(
        default=None, description="Default: true on /v1/rerank (Jina), false on /v2 (Cohere)."
    )
    truncate: bool | None = None


Envelope = Callable[[ServeContext, list[JsonObject], int], JsonObject]


def _jina(ctx: ServeContext, results: list[JsonObject], tokens: int) -> JsonObject:
    return {"model": ctx.served_model_name, "usage": {"total_tokens": tokens}, "results": results}


def _cohere(ctx: ServeContext, results: list[JsonObject], tokens: int) -> JsonObject:
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }


@dataclass(frozen=True)
class Dialect:
    return_documents: bool  # the API's own default
    envelope: Envelope


DIALECTS: dict[str, Dialect] = {
    "/v1/rerank": Dialect(True, _jina),
    "/v2/rerank": Dialect(False, _cohere),
    "/rerank": Dialect(False, _jina),  # Infinity: Jina's envelope, documents on request
}


async def _rerank(ctx: ServeContext, body: JsonObject, dialect: Dialect) -> Reply:
    req = validate(CompatRerankBody, body)
    texts = [d if isinstance(d, str) else d.text for d in req.documents]
    result = await ctx.engine.rerank(RerankRequest(req.query, texts, Tokenization(req.truncate)))
    scores = result.scores.tolist()
    with_documents = (
        dialect.return_documents if req.return_documents is None else (req.return_documents)
    )
    results: list[JsonObject] = []
    for index in rank(result.scores, req.top_n):
        item: JsonObject = {"index": index, "relevance_score": scores[index]}
        if with_documents:
            item["document"] = {"text": texts[index]}
        results.append(item)
    return Reply(dialect.envelope(ctx, results, result.metadata.compute_tokens), result.metadata)


async def jina_rerank(ctx: ServeContext, body: JsonObject) -> Reply:
    return await _rerank(ctx, body, DIALECTS["/v1/rerank"])


async def cohere_rerank(ctx: ServeContext, body: JsonObject) -> Reply:
    return await _rerank(ctx, body, DIALECTS["/v2/rerank"])


async def infinity_rerank(ctx: ServeContext, body: JsonObject) -> Reply:
    return await _rerank(ctx, body, DIALECTS["/rerank"])


_RESULTS = [{"index": 1, "relevance_score": 0.9, "document": {"text": "d"}}]
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/rerank",
        jina_rerank,
        CompatRerankBody,
        "Jina rerank",
        "Rerank",
        {"model": "m", "usage": {"total_tokens": 9}, "results": _RESULTS},
    ),
    Operation(
        "/v2/rerank",
        cohere_rerank,
        CompatRerankBody,
        "Cohere rerank v2",
        "Rerank",
        {"id": "…", "results": _RESULTS, "meta": {"api_version": {"version": "2"}}},
    ),
)
