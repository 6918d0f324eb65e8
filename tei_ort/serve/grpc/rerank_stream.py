"""RerankStream: many (query, text) messages in, one ranking out. The messages are read to the end,
cut into runs that share a query and tokenization (at most --max-client-batch-size each), and each
run is one engine rerank call, so a stream of thousands costs a few big calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np

from tei_ort.engine.types import Metadata, RerankRequest, RerankResult
from tei_ort.errors import EmptyInput
from tei_ort.serve.engine_api import EngineAPI
from tei_ort.serve.grpc import convert
from tei_ort.serve.grpc import tei_pb2 as pb


async def rank_stream(
    engine: EngineAPI, requests: AsyncIterator[pb.RerankStreamRequest], slots: asyncio.Semaphore
) -> tuple[pb.RerankResponse, Metadata]:
    started = time.perf_counter()
    pairs = [request async for request in requests]
    if not pairs:
        raise EmptyInput("`texts` cannot be empty")
    # TEI takes raw_scores and return_text from the first message only.
    first = pairs[0]
    limit = engine.config.max_client_batch_size
    results = await asyncio.gather(
        *(_rank(engine, run, first.raw_scores, slots) for run in runs(pairs, limit))
    )
    scores = np.concatenate([r.scores for r in results])  # (n,), in message order
    texts = [p.text for p in pairs] if first.return_text else None
    metas = [r.metadata for r in results]
    meta = Metadata(
        sum(m.compute_characters for m in metas),
        sum(m.compute_tokens for m in metas),
        # Phases: the mean over the engine calls (TEI reports the mean over its per-text calls).
        float(np.mean([m.tokenization_s for m in metas])),
        float(np.mean([m.queue_s for m in metas])),
        float(np.mean([m.inference_s for m in metas])),
        time.perf_counter() - started,
        tuple(t for m in metas for t in m.input_tokens),
    )
    ranks = convert.ranks(scores, texts)
    return pb.RerankResponse(ranks=ranks, metadata=convert.metadata(meta)), meta


async def _rank(
    engine: EngineAPI, run: list[pb.RerankStreamRequest], raw_scores: bool, slots: asyncio.Semaphore
) -> RerankResult:
    head = run[0]
    tokenization = convert.tokenization(head.truncate, head.truncation_direction)
    request = RerankRequest(head.query, [m.text for m in run], tokenization, raw_scores)
    async with slots:
        return await engine.rerank(request)


def runs(pairs: list[pb.RerankStreamRequest], limit: int) -> list[list[pb.RerankStreamRequest]]:
    """Consecutive messages with the same query and tokenization, at most `limit` per run."""
    out: list[list[pb.RerankStreamRequest]] = []
    for pair in pairs:
        last = out[-1] if out else None
        if (
            last is not None
            and len(last) < limit
            and (last[0].query, last[0].truncate, last[0].truncation_direction)
            == (pair.query, pair.truncate, pair.truncation_direction)
        ):
            last.append(pair)
        else:
            out.append([pair])
    return out
