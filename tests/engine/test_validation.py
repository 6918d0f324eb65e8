"""Every request rule, with TEI's error class and wording; a refused request never reaches the
model and leaves no slot taken."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tei_ort.engine import EmbedRequest, Engine, PredictRequest, RerankRequest, Tokenization
from tei_ort.errors import BatchSizeError, EmptyInput, TeiOrtError, ValidationError, WrongModelType
from tei_ort.package import Task
from tests.engine.conftest import asynchronous, running
from tests.engine.fakes import FakeModel

Call = Callable[[Engine], Awaitable[object]]
LONG = "word " * 100

CASES: list[tuple[str, Task, Call, type[TeiOrtError], str]] = [
    (
        "empty",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest([])),
        EmptyInput,
        "`inputs` cannot be empty",
    ),
    (
        "too many inputs",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest(["a"] * 5)),
        BatchSizeError,
        "batch size 5 > maximum allowed batch size 4",
    ),
    ("empty ids", Task.EMBEDDING, lambda e: e.embed(EmbedRequest([[]])), EmptyInput, "token-id"),
    (
        "ids outside the vocabulary",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest([[101, 30522]])),
        ValidationError,
        "between 0 and 30521",
    ),
    (
        "dimensions 0",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest(["a"], dimensions=0)),
        ValidationError,
        "`dimensions` should be positive",
    ),
    (
        "dimensions too large",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest(["a"], dimensions=9)),
        ValidationError,
        "model's dimension 8",
    ),
    (
        "unknown prompt",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest(["a"], tokenization=Tokenization(prompt_name="nope"))),
        ValidationError,
        "'nope'",
    ),
    (
        "too long without truncation",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest(["a", LONG], tokenization=Tokenization(truncate=False))),
        ValidationError,
        "must have less than 32 tokens. Given: 102",
    ),
    (
        "ids too long without truncation",
        Task.EMBEDDING,
        lambda e: e.embed(EmbedRequest([[7592] * 40], tokenization=Tokenization(truncate=False))),
        ValidationError,
        "must have less than 32 tokens. Given: 40",
    ),
    (
        "rerank on an embedding model",
        Task.EMBEDDING,
        lambda e: e.rerank(RerankRequest("q", ["a"])),
        WrongModelType,
        "model is not a re-ranker model",
    ),
    (
        "predict on an embedding model",
        Task.EMBEDDING,
        lambda e: e.predict(PredictRequest(["a"])),
        WrongModelType,
        "not a classifier",
    ),
    (
        "sparse on a dense model",
        Task.EMBEDDING,
        lambda e: e.embed_sparse(EmbedRequest(["a"])),
        WrongModelType,
        "SPLADE",
    ),
    (
        "embed on a classifier",
        Task.CLASSIFICATION,
        lambda e: e.embed(EmbedRequest(["a"])),
        WrongModelType,
        "not an embedding model",
    ),
    (
        "embed_all on a classifier",
        Task.CLASSIFICATION,
        lambda e: e.embed_all(EmbedRequest(["a"])),
        WrongModelType,
        "not an embedding model",
    ),
    (
        "rerank on a classifier",
        Task.CLASSIFICATION,
        lambda e: e.rerank(RerankRequest("q", ["a"])),
        WrongModelType,
        "re-ranker",
    ),
    (
        "prompt with a pair",
        Task.CLASSIFICATION,
        lambda e: e.predict(
            PredictRequest([("a", "b")], tokenization=Tokenization(prompt_name="query"))
        ),
        ValidationError,
        "`prompt_name` cannot be set with dual inputs",
    ),
    (
        "normalize on SPLADE",
        Task.SPARSE_EMBEDDING,
        lambda e: e.embed(EmbedRequest(["a"])),
        WrongModelType,
        "`normalize` is not available for SPLADE models",
    ),
    (
        "embed_all on SPLADE",
        Task.SPARSE_EMBEDDING,
        lambda e: e.embed_all(EmbedRequest(["a"])),
        WrongModelType,
        "SPLADE",
    ),
    (
        "empty texts",
        Task.RERANKER,
        lambda e: e.rerank(RerankRequest("q", [])),
        EmptyInput,
        "`texts` cannot be empty",
    ),
    (
        "too many texts",
        Task.RERANKER,
        lambda e: e.rerank(RerankRequest("q", ["a"] * 5)),
        BatchSizeError,
        "batch size 5 > maximum allowed batch size 4",
    ),
    ("empty tokenize", Task.EMBEDDING, lambda e: e.tokenize([], True, None), EmptyInput, "inputs"),
    ("empty decode", Task.EMBEDDING, lambda e: e.decode([], True), EmptyInput, "`ids` cannot"),
    (
        "decode outside the vocabulary",
        Task.EMBEDDING,
        lambda e: e.decode([[99999]], True),
        ValidationError,
        "vocabulary",
    ),
]


@pytest.mark.parametrize(
    ("task", "call", "error", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
@asynchronous
async def test_rule(task: Task, call: Call, error: type[TeiOrtError], message: str) -> None:
    model = FakeModel(task=task, prompts={"query": "query: "})
    async with running(model, max_client_batch_size=4) as engine:
        with pytest.raises(error) as caught:
            await call(engine)
        assert message in str(caught.value)
        assert type(caught.value) is error
        assert model.batches == []
        assert engine.stats().in_flight == 0
