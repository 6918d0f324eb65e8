from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tei_ort.engine import Engine, EngineConfig
from tei_ort.package import Task
from tei_ort.serve.engine_api import EngineAPI
from tests.serve.fakes import FakeEngine, FakeModel
from tests.serve.live import context, serve


@pytest.fixture(scope="session")
def fake_models() -> dict[Task, FakeModel]:
    return {task: FakeModel(task) for task in Task}


def _client(engine: EngineAPI, **kwargs: object) -> Iterator[tuple[httpx.Client, EngineAPI]]:
    with serve(context(engine), **kwargs) as url, httpx.Client(base_url=url, timeout=30) as client:  # type: ignore[arg-type]
        yield client, engine


@pytest.fixture(scope="module")
def embedding_server(
    fake_models: dict[Task, FakeModel],
) -> Iterator[tuple[httpx.Client, EngineAPI]]:
    yield from _client(real_engine(fake_models[Task.EMBEDDING]))


@pytest.fixture(scope="module")
def classifier_server(
    fake_models: dict[Task, FakeModel],
) -> Iterator[tuple[httpx.Client, EngineAPI]]:
    yield from _client(real_engine(fake_models[Task.CLASSIFICATION]))


@pytest.fixture(scope="module")
def reranker_server(
    fake_models: dict[Task, FakeModel],
) -> Iterator[tuple[httpx.Client, EngineAPI]]:
    yield from _client(real_engine(fake_models[Task.RERANKER]))


@pytest.fixture(scope="module")
def sparse_server(fake_models: dict[Task, FakeModel]) -> Iterator[tuple[httpx.Client, EngineAPI]]:
    yield from _client(real_engine(fake_models[Task.SPARSE_EMBEDDING]))


MAX_CLIENT_BATCH_SIZE = 8


def real_engine(model: FakeModel) -> Engine:
    """The real engine (validation, batching, post-processing) over the fake model."""
    return Engine(model, EngineConfig(max_client_batch_size=MAX_CLIENT_BATCH_SIZE))


@pytest.fixture()
def fake_engine_server(
    fake_models: dict[Task, FakeModel],
) -> Iterator[tuple[httpx.Client, FakeEngine]]:
    """A fake engine whose failures tests can script (overload, backend failure, unhealthy)."""
    engine = FakeEngine(fake_models[Task.EMBEDDING])
    with serve(context(engine)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, engine
