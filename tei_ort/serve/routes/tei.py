"""TEI's native inference routes, with TEI's request and response shapes."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from tei_ort.engine.types import EmbedRequest, PredictRequest, RerankRequest, SparseVector
from tei_ort.serve import embedding_types, schemas
from tei_ort.serve.operations import JsonObject, Operation, ServeContext, validate
from tei_ort.serve.ranking import rank
from tei_ort.serve.replies import Reply, dumps
from tei_ort.serve.routes import rerank_compat

# Rough floats per token in a /tokenize answer, to judge when it is big enough to serialize in a
# thread.
_NUMBERS_PER_TOKEN = 5


async def embed(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.EmbedBody, body)
    kind = req.embedding_type
    ranges = embedding_types.ranges_for(ctx, kind, req.dimensions, normalized=req.normalize)
    result = await ctx.engine.embed(
        EmbedRequest(
            schemas.embed_inputs(req.inputs),
            req.tokenization(req.prompt_name),
            normalize=req.normalize,
            dimensions=req.dimensions,
        )
    )
    # (n, dimensions) float32 / int8 / uint8, or (n, dimensions / 8) packed bits: orjson writes
    # it as [[number]], one vector per input.
    vectors = embedding_types.quantize(result.embeddings, kind, ranges)
    return Reply(vectors, result.metadata, vectors.size)


async def embed_all(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.EmbedAllBody, body)
    result = await ctx.engine.embed_all(
        EmbedRequest(schemas.embed_inputs(req.inputs), req.tokenization(req.prompt_name))
    )
    numbers = sum(tokens.size for tokens in result.embeddings)
    return Reply(result.embeddings, result.metadata, numbers)  # [(len, hidden)] -> [[[f32]]]


async def embed_sparse(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.EmbedAllBody, body)
    result = await ctx.engine.embed_sparse(
        EmbedRequest(schemas.embed_inputs(req.inputs), req.tokenization(req.prompt_name))
    )
    # One {index, value} object per non-zero entry: built and serialized in a worker thread.
    body_bytes = await asyncio.to_thread(_sparse_json, result.vectors)
    return Reply(orjson.Fragment(body_bytes), result.metadata)


def _sparse_json(vectors: list[SparseVector]) -> bytes:
    return dumps(
        [
            [
                {"index": index, "value": value}
                for index, value in zip(v.indices.tolist(), v.values.tolist(), strict=True)
            ]
            for v in vectors
        ]
    )


async def predict(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.PredictBody, body)
    inputs, is_batch = schemas.predict_inputs(req.inputs)
    result = await ctx.engine.predict(
        PredictRequest(inputs, req.tokenization(), raw_scores=req.raw_scores)
    )
    labels = ctx.engine.model.manifest.id2label
    order = np.argsort(-result.scores, axis=1, kind="stable")  # (n, num_labels), best first
    predictions = [
        [{"score": row[i], "label": labels.get(int(i), f"LABEL_{i}")} for i in ranked]
        for row, ranked in zip(result.scores.tolist(), order.tolist(), strict=True)
    ]
    return Reply(predictions if is_batch else predictions[0], result.metadata)


async def rerank(ctx: ServeContext, body: JsonObject) -> Reply:
    if "texts" not in body and "documents" in body:
        # Infinity's /rerank speaks Cohere's shape (LiteLLM's infinity provider sends it here).
        return await rerank_compat.infinity_rerank(ctx, body)
    req = validate(schemas.RerankBody, body)
    result = await ctx.engine.rerank(
        RerankRequest(req.query, req.texts, req.tokenization(), raw_scores=req.raw_scores)
    )
    ranked = rank(result.scores, req.top_n)
    scores = result.scores.tolist()
    ranks = [
        {"index": i, "text": req.texts[i], "score": scores[i]}
        if req.return_text
        else {"index": i, "score": scores[i]}
        for i in ranked
    ]
    return Reply(ranks, result.metadata)


async def similarity(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.SimilarityBody, body)
    params = req.parameters or schemas.SimilarityParameters()
    texts: list[str] = [req.inputs.source_sentence, *req.inputs.sentences]
    if not req.inputs.sentences:
        texts = []  # nothing to compare with: the engine answers 400 Empty
    result = await ctx.engine.embed(
        EmbedRequest(list(texts), params.tokenization(params.prompt_name), normalize=True)
    )
    vectors = result.embeddings  # (1 + n, dimensions), unit length: dot product = cosine
    return Reply(vectors[1:] @ vectors[0], result.metadata)


async def tokenize(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.TokenizeBody, body)
    inputs = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    tokens = await ctx.engine.tokenize(inputs, req.add_special_tokens, req.prompt_name)
    numbers = _NUMBERS_PER_TOKEN * sum(len(t) for t in tokens)
    return Reply(tokens, None, numbers)  # Token dataclasses: orjson writes {id, text, ...}


async def decode(ctx: ServeContext, body: JsonObject) -> Reply:
    req = validate(schemas.DecodeBody, body)
    return Reply(await ctx.engine.decode(schemas.decode_ids(req.ids), req.skip_special_tokens))


_EMBEDDING = [[0.0, 0.1, 0.2]]
OPERATIONS: tuple[Operation, ...] = (
    Operation("/embed", embed, schemas.EmbedBody, "Pooled embeddings", "TEI", _EMBEDDING),
    Operation(
        "/embed_all", embed_all, schemas.EmbedAllBody, "Per-token embeddings", "TEI", [_EMBEDDING]
    ),
    Operation(
        "/embed_sparse",
        embed_sparse,
        schemas.EmbedAllBody,
        "SPLADE sparse embeddings",
        "TEI",
        [[{"index": 2001, "value": 0.5}]],
    ),
    Operation(
        "/predict",
        predict,
        schemas.PredictBody,
        "Sequence classification",
        "TEI",
        [{"score": 0.9, "label": "positive"}],
    ),
    Operation(
        "/rerank",
        rerank,
        schemas.RerankBody,
        "Re-rank texts against a query",
        "TEI",
        [{"index": 0, "score": 0.9}],
    ),
    Operation(
        "/similarity",
        similarity,
        schemas.SimilarityBody,
        "Cosine similarity to a source",
        "TEI",
        [0.8, 0.2],
    ),
    Operation(
        "/tokenize",
        tokenize,
        schemas.TokenizeBody,
        "Tokenize",
        "TEI",
        [[{"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}]],
        metered=False,
    ),
    Operation(
        "/decode", decode, schemas.DecodeBody, "Token ids to text", "TEI", ["hello"], metered=False
    ),
)
