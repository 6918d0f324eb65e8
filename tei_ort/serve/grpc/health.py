"""gRPC health checking (grpc.health.v1) as TEI reports it: Info and Tokenize always serve; the
services of the model's task (Embed; Predict; Predict and Rerank) serve while the engine is
healthy; the others never do (their calls answer FAILED_PRECONDITION). `Check` on a model service
asks the engine as GET /health does, so it probes the model after a failed batch and sees it
recover; `Watch` follows the engine's health after every batch."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio

from tei_ort.engine.config import BatchReport
from tei_ort.package import Task
from tei_ort.serve.engine_api import EngineAPI

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALWAYS_SERVING = ("", "tei.v1.Info", "tei.v1.Tokenize")
MODEL_SERVICES: dict[Task, tuple[str, ...]] = {
    Task.EMBEDDING: ("tei.v1.Embed",),
    Task.SPARSE_EMBEDDING: ("tei.v1.Embed",),
    Task.CLASSIFICATION: ("tei.v1.Predict",),
    Task.RERANKER: ("tei.v1.Predict", "tei.v1.Rerank"),
}
ALL_MODEL_SERVICES = ("tei.v1.Embed", "tei.v1.Predict", "tei.v1.Rerank")


class ModelHealth(aio.HealthServicer):
    def __init__(self, engine: EngineAPI) -> None:
        super().__init__()
        self._engine = engine
        self._serving = MODEL_SERVICES[engine.model.task]
        self._healthy: bool | None = None
        self._updates: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for service in ALWAYS_SERVING:
            await self.set(service, SERVING)
        for service in ALL_MODEL_SERVICES:
            await self.set(service, NOT_SERVING)
        await self._mark(self._engine.is_healthy)
        self._engine.add_batch_listener(self._after_batch)

    async def Check(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ],
    ) -> health_pb2.HealthCheckResponse:
        if request.service in self._serving:
            await self._mark(await self._engine.check_health())
        return await super().Check(request, context)

    async def _mark(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        for service in self._serving:
            await self.set(service, SERVING if healthy else NOT_SERVING)

    def _after_batch(self, report: BatchReport) -> None:
        # Called on the loop after each forward; a failed one turns the engine unhealthy.
        if self._engine.is_healthy != self._healthy:
            update = asyncio.get_running_loop().create_task(self._mark(self._engine.is_healthy))
            self._updates.add(update)
            update.add_done_callback(self._updates.discard)
