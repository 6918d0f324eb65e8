"""The engine behind every route: validation, bounded admission, tokenization off the event loop
(but for one short input), the token-budget batcher, and per-request post-processing in numpy.

    Engine.embed(request)
      validation.check_*           cheap rules, on the loop, before admission
      Admission.slot()             at most max_concurrent_requests in flight, else Overloaded (429)
      inputs.encode_inputs         in the tokenization thread pool (the Rust tokenizer's batch call);
                                   one short input on the loop (_is_short)
      Batcher.run                  per-input items, shared batches, a forward thread per replica
      outputs.*                    truncate dimensions, normalize, classify: numpy per request

Metadata per request: tokenization_s and total_s are the request's wall times (waiting for a
tokenization thread included); queue_s and inference_s are means over its inputs, which may have
run in several batches (TEI reports per-input averages for batches too).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import TypeVar

import numpy as np

from tei_ort.engine import results, validation
from tei_ort.engine.admission import Admission
from tei_ort.engine.backend import FloatArray, ModelBackend
from tei_ort.engine.batch_types import GroupTiming
from tei_ort.engine.batcher import Batcher
from tei_ort.engine.config import (
    BatchReport,
    EngineConfig,
    EngineStats,
    default_tokenization_workers,
)
from tei_ort.engine.inputs import Encodings, encode_inputs
from tei_ort.engine.queue import ForwardKind
from tei_ort.engine.types import (
    EmbedInput,
    EmbedRequest,
    EmbedResult,
    PredictInput,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    SparseResult,
    TokenEmbeddingsResult,
    Tokenization,
)
from tei_ort.errors import BackendError, Unhealthy
from tei_ort.runtime import outputs
from tei_ort.tokenization import Token

__all__ = ["BatchReport", "Engine", "EngineConfig", "EngineStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Engine:
    def __init__(
        self,
        model: ModelBackend,
        config: EngineConfig,
        replicas: Sequence[ModelBackend] | None = None,
    ) -> None:
        """`replicas`: the backends forwards run on, one forward thread each, all fed by one
        queue (--engine-replicas: N sessions of one package); None: `model` alone. `model`
        tokenizes and describes the model; every replica must compute what it computes."""
        max_input_length = model.manifest.max_input_length
        if config.max_batch_tokens < max_input_length:
            raise ValueError(
                f"max_batch_tokens ({config.max_batch_tokens}) must be at least the model's "
                f"max_input_length ({max_input_length}), or its longest inputs fit no batch"
            )
        self._model = model
        self._config = config
        self._workers = config.tokenization_workers or default_tokenization_workers()
        batch_tokens = min(config.max_batch_tokens, config.target_batch_tokens or sys.maxsize)
        self._batcher = Batcher(
            (model,) if replicas is None else replicas,
            batch_tokens,
            config.max_batch_requests,
            config.max_padding_ratio,
        )
        self._pool: ThreadPoolExecutor | None = None
        self._admission = Admission(config.max_concurrent_requests)

    @property
    def model(self) -> ModelBackend:
        return self._model

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def replicas(self) -> int:  # forward threads: one per replica's session, or per stream
        return self._batcher.replicas

    @property
    def tokenization_workers(self) -> int:  # config.tokenization_workers or the default
        return self._workers

    @property
    def is_healthy(self) -> bool:
        return self._admission.is_open and self._batcher.is_healthy

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the threads and the batcher, then warm up each replica with one forward of the
        longest input; BackendError (and nothing started) if one fails."""
        if self._admission.is_open:
            return
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="tei-tokenize")
        await self._batcher.start()
        started = time.perf_counter()
        warmed_up = False
        try:
            warm_up = await self._run_in_pool(self._warm_up_encodings)
            await self._batcher.probe(warm_up.encodings)
            warmed_up = True
        finally:
            if not warmed_up:
                await self._shutdown_threads()
        self._admission.open()
        config = self._config
        logger.info(
            "engine ready: %s model, max_input_length %d, max_batch_tokens %d, "
            "target_batch_tokens %s, max_padding_ratio %s, max_batch_requests %s, "
            "max_concurrent_requests %d, max_client_batch_size %d, "
            "%d tokenization workers, %d forward threads, warm-up %.2f s",
            self._model.task.value,
            self._model.manifest.max_input_length,
            config.max_batch_tokens,
            config.target_batch_tokens or config.max_batch_tokens,
            config.max_padding_ratio,
            config.max_batch_requests or "unlimited",
            config.max_concurrent_requests,
            config.max_client_batch_size,
            self._workers,
            self._batcher.replicas,
            time.perf_counter() - started,
        )

    async def stop(self) -> None:
        """Refuse new requests (Unhealthy), answer every admitted one, then stop the threads."""
        if not self._admission.is_open:
            return
        await self._admission.close()
        await self._shutdown_threads()
        logger.info("engine stopped")

    async def check_health(self) -> bool:
        """As TEI: cheap while healthy; after a failure, a real one-input forward decides."""
        if not self._admission.is_open:
            return False
        if self._batcher.is_healthy:
            return True
        try:
            probe = await self._run_in_pool(self._encode, ["health"], Tokenization(), True)
            await self._batcher.probe(probe.encodings)
        except BackendError:
            return False
        return True

    def add_batch_listener(self, listener: Callable[[BatchReport], None]) -> None:
        """Called on the loop after every forward (failed ones too); keep it quick."""
        self._batcher.listeners.append(listener)

    def stats(self) -> EngineStats:
        counters = self._batcher.counters
        return EngineStats(
            queue_size=self._batcher.queue_size,
            in_flight=self._admission.in_flight,
            batch_next_size=counters.next_size,
            batch_next_tokens=counters.next_tokens,
            batch_next_padded_tokens=counters.next_padded_tokens,
            batches_total=counters.batches,
            batch_failures_total=counters.failures,
            dropped_inputs_total=counters.dropped,
            overloaded_total=self._admission.refused,
            is_healthy=self.is_healthy,
        )

    # -- routes -------------------------------------------------------------------------------

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        started = time.perf_counter()
        validation.check_embed(self._model, request, self._config.max_client_batch_size)
        with self._admission.slot():
            encoded, rows, timing = await self._run(
                request.inputs, request.tokenization, results.row
            )
        pooled = np.stack(rows)  # (n, dimensions)
        pooled = outputs.truncate_dimensions(pooled, request.dimensions)
        if request.normalize:
            pooled = outputs.normalize(pooled)
        return EmbedResult(pooled, results.metadata(encoded, timing, started))

    async def embed_sparse(self, request: EmbedRequest) -> SparseResult:
        started = time.perf_counter()
        validation.check_embed_sparse(self._model, request, self._config.max_client_batch_size)
        with self._admission.slot():
            # Rows become sparse in the forward thread, so no (n, vocab) array is ever kept.
            encoded, vectors, timing = await self._run(
                request.inputs, request.tokenization, results.sparse, ForwardKind.SPARSE
            )
        return SparseResult(vectors, results.metadata(encoded, timing, started))

    async def embed_all(self, request: EmbedRequest) -> TokenEmbeddingsResult:
        started = time.perf_counter()
        validation.check_embed_all(self._model, request, self._config.max_client_batch_size)
        with self._admission.slot():
            encoded, tokens, timing = await self._run(
                request.inputs, request.tokenization, results.copy, ForwardKind.TOKENS
            )
        return TokenEmbeddingsResult(tokens, results.metadata(encoded, timing, started))

    async def predict(self, request: PredictRequest) -> PredictResult:
        started = time.perf_counter()
        validation.check_predict(self._model, request, self._config.max_client_batch_size)
        with self._admission.slot():
            encoded, rows, timing = await self._run(
                request.inputs, request.tokenization, results.row
            )
        scores = outputs.classify(np.stack(rows), request.raw_scores)  # (n, num_labels)
        results.check_scores(scores)
        return PredictResult(scores, results.metadata(encoded, timing, started))

    async def rerank(self, request: RerankRequest) -> RerankResult:
        started = time.perf_counter()
        validation.check_rerank(self._model, request, self._config.max_client_batch_size)
        pairs: list[PredictInput] = [(request.query, text) for text in request.texts]
        with self._admission.slot():
            encoded, rows, timing = await self._run(pairs, request.tokenization, results.row)
        logits = np.stack(rows)[:, :1]  # (n, 1): a re-ranker's score is its first logit
        scores = outputs.classify(logits, request.raw_scores)[:, 0]  # (n,)
        results.check_scores(scores)
        return RerankResult(scores, results.metadata(encoded, timing, started))

    async def tokenize(
        self, inputs: list[str], add_special_tokens: bool, prompt_name: str | None
    ) -> list[list[Token]]:
        limit = self._config.max_client_batch_size
        validation.check_tokenize(self._model, inputs, limit, prompt_name)
        prompt = self._model.prompt(prompt_name) or ""
        tokenizer = self._model.tokenizer
        with self._admission.slot():
            return await self._run_in_pool(
                lambda: [
                    tokenizer.tokenize(prompt + text, add_special_tokens=add_special_tokens)
                    for text in inputs
                ]
            )

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        validation.check_decode(ids, self._config.max_client_batch_size)
        tokenizer = self._model.tokenizer
        with self._admission.slot():
            return await self._run_in_pool(
                lambda: [tokenizer.decode(i, skip_special_tokens=skip_special_tokens) for i in ids]
            )

    # -- internals ----------------------------------------------------------------------------

    async def _run(
        self,
        inputs: Sequence[EmbedInput | PredictInput],
        tokenization: Tokenization,
        convert: Callable[[FloatArray], T],
        kind: ForwardKind = ForwardKind.POOLED,
    ) -> tuple[Encodings, list[T], GroupTiming]:
        truncate = (
            self._config.auto_truncate if tokenization.truncate is None else tokenization.truncate
        )
        started = time.perf_counter()
        if _is_short(inputs):  # a hand-off to a tokenization thread costs more than this
            encoded = self._encode(inputs, tokenization, truncate)
        else:
            encoded = await self._run_in_pool(self._encode, inputs, tokenization, truncate)
        # Wall time, waiting for a tokenization thread included.
        encoded = replace(encoded, seconds=time.perf_counter() - started)
        converted, timing = await self._batcher.run(encoded.encodings, kind, convert)
        return encoded, converted, timing

    def _encode(
        self,
        inputs: Sequence[EmbedInput | PredictInput],
        tokenization: Tokenization,
        truncate: bool,
    ) -> Encodings:
        return encode_inputs(
            self._model,
            inputs,
            truncate=truncate,
            direction=tokenization.direction,
            prompt_name=tokenization.prompt_name,
        )

    def _warm_up_encodings(self) -> Encodings:
        # The longest input the model takes: the forward that allocates the most.
        text = "warm up " * self._model.manifest.max_input_length
        return self._encode([text], Tokenization(truncate=True), True)

    async def _run_in_pool(self, fn: Callable[..., R], *args: object) -> R:
        if self._pool is None:
            raise Unhealthy("the engine is not running")
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))

    async def _shutdown_threads(self) -> None:
        await self._batcher.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # idle by now; never block the loop
            self._pool = None


# One input of at most this many characters (or token ids) is tokenized on the event loop: that
# takes ~0.06 ms (MiniLM's tokenizer, a 64-character query), a hand-off to a pool thread and back
# ~0.12 ms (an idle run_in_executor round trip on a 2-core AMD EPYC Zen 3 [x86-avx2] VM). Small:
# scripts/concurrency_study.py with and without this measured a short query's overhead over the
# raw runtime 0.52 and 0.10 ms lower in two runs, and one-text throughput 0.95-1.05x (noise).
INLINE_CHARS = 256


def _is_short(inputs: Sequence[EmbedInput | PredictInput]) -> bool:
    if len(inputs) != 1:
        return False
    first = inputs[0]
    if isinstance(first, tuple):
        return sum(len(text) for text in first) <= INLINE_CHARS
    return len(first) <= INLINE_CHARS
