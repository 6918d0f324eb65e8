"""What the HTTP layer needs from the engine, as a Protocol: the real tei_ort.engine.Engine
satisfies it structurally, and tests can drive the server with a fake that does too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tei_ort.engine.config import BatchReport, EngineStats
from tei_ort.engine.types import (
    EmbedRequest,
    EmbedResult,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    SparseResult,
    TokenEmbeddingsResult,
)
from tei_ort.package import Manifest, Task
from tei_ort.tokenization import Token


class ModelView(Protocol):
    @property
    def manifest(self) -> Manifest: ...

    @property
    def task(self) -> Task: ...


class EngineLimits(Protocol):
    @property
    def max_concurrent_requests(self) -> int: ...

    @property
    def max_batch_tokens(self) -> int: ...

    @property
    def max_batch_requests(self) -> int | None: ...

    @property
    def max_client_batch_size(self) -> int: ...

    @property
    def auto_truncate(self) -> bool: ...

    @property
    def tokenization_workers(self) -> int | None: ...


class EngineAPI(Protocol):
    @property
    def model(self) -> ModelView: ...

    @property
    def config(self) -> EngineLimits: ...

    @property
    def is_healthy(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def check_health(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def add_batch_listener(self, listener: Callable[[BatchReport], None]) -> None: ...

    async def embed(self, request: EmbedRequest) -> EmbedResult: ...

    async def embed_sparse(self, request: EmbedRequest) -> SparseResult: ...

    async def embed_all(self, request: EmbedRequest) -> TokenEmbeddingsResult: ...

    async def predict(self, request: PredictRequest) -> PredictResult: ...

    async def rerank(self, request: RerankRequest) -> RerankResult: ...

    async def tokenize(
        self, inputs: list[str], add_special_tokens: bool, prompt_name: str | None
    ) -> list[list[Token]]: ...

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]: ...
