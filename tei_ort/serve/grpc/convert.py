"""tei.v1 messages to the engine's requests, and the engine's results to tei.v1 messages.

proto3 scalars cannot be absent: `truncate` is the client's bool as sent (false: refuse over-long
inputs, as TEI's gRPC server does, whatever --auto-truncate says); `normalize`, `dimensions` and
`prompt_name` are `optional` fields, None unless set."""

from __future__ import annotations

import numpy as np

from tei_ort.engine.config import default_tokenization_workers
from tei_ort.engine.types import (
    EmbedResult,
    Metadata,
    PredictInput,
    PredictRequest,
    SparseResult,
    TokenEmbeddingsResult,
    Tokenization,
)
from tei_ort.errors import ValidationError
from tei_ort.package import Task
from tei_ort.serve.grpc import tei_pb2 as pb
from tei_ort.serve.operations import ServeContext
from tei_ort.tokenization import Token, TruncationDirection

DIRECTIONS: dict[int, TruncationDirection] = {
    pb.TRUNCATION_DIRECTION_RIGHT: TruncationDirection.RIGHT,
    pb.TRUNCATION_DIRECTION_LEFT: TruncationDirection.LEFT,
}
# SPLADE models are embedding models to TEI (pooling "splade").
MODEL_TYPES = {
    Task.EMBEDDING: pb.MODEL_TYPE_EMBEDDING,
    Task.SPARSE_EMBEDDING: pb.MODEL_TYPE_EMBEDDING,
    Task.CLASSIFICATION: pb.MODEL_TYPE_CLASSIFIER,
    Task.RERANKER: pb.MODEL_TYPE_RERANKER,
}
_NS = 1_000_000_000


def tokenization(truncate: bool, direction: int, prompt_name: str | None = None) -> Tokenization:
    if direction not in DIRECTIONS:
        # An enum value this proto does not define (TEI panics on one).
        raise ValidationError(f"unknown truncation_direction {direction}")
    return Tokenization(truncate, DIRECTIONS[direction], prompt_name)


def metadata(meta: Metadata) -> pb.Metadata:
    return pb.Metadata(
        compute_chars=meta.compute_characters,
        compute_tokens=meta.compute_tokens,
        total_time_ns=int(meta.total_s * _NS),
        tokenization_time_ns=int(meta.tokenization_s * _NS),
        queue_time_ns=int(meta.queue_s * _NS),
        inference_time_ns=int(meta.inference_s * _NS),
    )


def info(ctx: ServeContext) -> pb.InfoResponse:
    manifest = ctx.engine.model.manifest
    limits = ctx.engine.config
    return pb.InfoResponse(
        version=ctx.version,
        model_id=ctx.model_id,
        model_sha=ctx.revision,
        model_dtype=ctx.dtype,
        model_type=MODEL_TYPES[manifest.task],
        max_concurrent_requests=limits.max_concurrent_requests,
        max_input_length=manifest.max_input_length,
        max_batch_tokens=limits.max_batch_tokens,
        max_batch_requests=limits.max_batch_requests,
        max_client_batch_size=limits.max_client_batch_size,
        tokenization_workers=limits.tokenization_workers or default_tokenization_workers(),
    )


def embed_response(result: EmbedResult) -> pb.EmbedResponse:
    # (1, dimensions): one input per message
    return pb.EmbedResponse(
        embeddings=result.embeddings[0].tolist(), metadata=metadata(result.metadata)
    )


def sparse_response(result: SparseResult) -> pb.EmbedSparseResponse:
    vector = result.vectors[0]
    values = [
        pb.SparseValue(index=i, value=v)
        for i, v in zip(vector.indices.tolist(), vector.values.tolist(), strict=True)
    ]
    return pb.EmbedSparseResponse(sparse_embeddings=values, metadata=metadata(result.metadata))


def all_response(result: TokenEmbeddingsResult) -> pb.EmbedAllResponse:
    tokens = [pb.TokenEmbedding(embeddings=row) for row in result.embeddings[0].tolist()]
    return pb.EmbedAllResponse(token_embeddings=tokens, metadata=metadata(result.metadata))


def pair(texts: list[str]) -> PredictInput:
    if len(texts) == 1:
        return texts[0]
    if len(texts) == 2:
        return (texts[0], texts[1])
    raise ValidationError(f"`inputs` must have a single or two elements. Given: {len(texts)}")


def predict_request(
    inputs: PredictInput, truncate: bool, raw_scores: bool, direction: int
) -> PredictRequest:
    return PredictRequest([inputs], tokenization(truncate, direction), raw_scores=raw_scores)


def predictions(scores: np.ndarray, labels: dict[int, str]) -> list[pb.Prediction]:
    """Best first, as the HTTP route orders them. `scores`: (num_labels,)."""
    order = np.argsort(-scores, kind="stable")
    values = scores.tolist()
    return [
        pb.Prediction(score=values[i], label=labels.get(i, f"LABEL_{i}")) for i in order.tolist()
    ]


def ranks(scores: np.ndarray, texts: list[str] | None) -> list[pb.Rank]:
    """Every text, best first (TEI's gRPC Rerank has no top_n). `scores`: (n,)."""
    order = np.argsort(-scores, kind="stable")
    values = scores.tolist()
    return [
        pb.Rank(index=i, score=values[i], text=None if texts is None else texts[i])
        for i in order.tolist()
    ]


def encode_response(tokens: list[Token]) -> pb.EncodeResponse:
    return pb.EncodeResponse(
        tokens=[
            pb.SimpleToken(id=t.id, text=t.text, special=t.special, start=t.start, stop=t.stop)
            for t in tokens
        ]
    )
