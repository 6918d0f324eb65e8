"""The engine as the routes see it: tei_ort.engine.Engine's API, with each inference call counted
(TEI's per-input te_embed_* / te_predict_* families, te_request_input_length, te_batch_next_*)
and its phases added to the request's span. A decorator, so that neither the routes nor the
engine know about Prometheus or OpenTelemetry."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from tei_ort.engine.config import BatchReport, EngineStats
from tei_ort.engine.types import (
    EmbedRequest,
    EmbedResult,
    Metadata,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    SparseResult,
    TokenEmbeddingsResult,
)
from tei_ort.serve.engine_api import EngineAPI, EngineLimits, ModelView
from tei_ort.serve.metrics import Family, ModelMetrics
from tei_ort.serve.telemetry import current_request
from tei_ort.serve.tracing import Tracing
from tei_ort.tokenization import Token


class _Result(Protocol):
    @property
    def metadata(self) -> Metadata: ...


R = TypeVar("R", bound=_Result)


class ObservedEngine:
    def __init__(self, engine: EngineAPI, metrics: ModelMetrics, tracing: Tracing) -> None:
        self._engine = engine
        self._metrics = metrics
        self._tracing = tracing
        engine.add_batch_listener(metrics.batch_done)

    @property
    def model(self) -> ModelView:
        return self._engine.model

    @property
    def config(self) -> EngineLimits:
        return self._engine.config

    @property
    def is_healthy(self) -> bool:
        return self._engine.is_healthy

    async def start(self) -> None:
        await self._engine.start()

    async def stop(self) -> None:
        await self._engine.stop()

    async def check_health(self) -> bool:
        return await self._engine.check_health()

    def stats(self) -> EngineStats:
        return self._engine.stats()

    def add_batch_listener(self, listener: Callable[[BatchReport], None]) -> None:
        self._engine.add_batch_listener(listener)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return await self._observe(Family.EMBED, len(request.inputs), self._engine.embed(request))

    async def embed_sparse(self, request: EmbedRequest) -> SparseResult:
        call = self._engine.embed_sparse(request)
        return await self._observe(Family.EMBED, len(request.inputs), call)

    async def embed_all(self, request: EmbedRequest) -> TokenEmbeddingsResult:
        call = self._engine.embed_all(request)
        return await self._observe(Family.EMBED, len(request.inputs), call)

    async def predict(self, request: PredictRequest) -> PredictResult:
        call = self._engine.predict(request)
        return await self._observe(Family.PREDICT, len(request.inputs), call)

    async def rerank(self, request: RerankRequest) -> RerankResult:
        call = self._engine.rerank(request)
        return await self._observe(Family.PREDICT, len(request.texts), call)

    async def tokenize(
        self, inputs: list[str], add_special_tokens: bool, prompt_name: str | None
    ) -> list[list[Token]]:
        return await self._engine.tokenize(inputs, add_special_tokens, prompt_name)

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return await self._engine.decode(ids, skip_special_tokens)

    async def _observe(self, family: Family, inputs: int, call: Awaitable[R]) -> R:
        started_ns = time.time_ns()
        started = time.perf_counter()
        self._metrics.inputs_received(family, inputs)
        result = await call
        self._metrics.inputs_answered(
            family, inputs, time.perf_counter() - started, result.metadata
        )
        record = current_request()
        if record is not None:
            self._tracing.record_phases(record.span, started_ns, result.metadata)
        return result
