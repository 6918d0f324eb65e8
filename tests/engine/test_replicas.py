"""Engine replicas (--engine-replicas): several backends, one forward thread each, fed by one
queue. Fakes with gates make concurrency observable without timing: a test holds both gates
closed and waits until each replica has entered its forward."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from tei_ort.engine import BatchReport, EmbedRequest, Engine, EngineConfig
from tei_ort.engine.config import replica_threads
from tei_ort.errors import BackendError, Unhealthy
from tests.engine.conftest import TIMEOUT_S, asynchronous, forward_started, until
from tests.engine.fakes import FakeModel, vector
from tests.engine.test_batching import texts_of_mixed_length


def expected(model: FakeModel, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    rows = np.stack([vector(e.ids) for e in model.encode(texts)])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@asynccontextmanager
async def replicated(n: int, **config: Any) -> AsyncIterator[tuple[Engine, list[FakeModel]]]:
    models = [FakeModel() for _ in range(n)]
    engine = Engine(models[0], EngineConfig(**config), replicas=models)
    await engine.start()
    for model in models:  # forget the warm-up forwards
        model.batches.clear()
        while model.entered.acquire(blocking=False):
            pass
    try:
        yield engine, models
    finally:
        for model in models:
            model.gate.set()
        await engine.stop()


def ids_of(model: FakeModel) -> list[list[int]]:
    return [ids.tolist() for batch in model.batches for ids in batch]


@asynchronous
async def test_every_replica_warms_up_and_they_serve_what_one_serves() -> None:
    texts = texts_of_mixed_length(300)
    single = FakeModel()
    one = Engine(single, EngineConfig(max_batch_tokens=256))
    await one.start()
    want = (await one.embed(EmbedRequest([*texts]))).embeddings
    await one.stop()
    models = [FakeModel() for _ in range(3)]
    engine = Engine(models[0], EngineConfig(max_batch_tokens=256), replicas=models)
    assert engine.replicas == 3
    await engine.start()
    # The warm-up forward (one input, the longest the model takes) ran once on each replica.
    assert [len(m.batches) for m in models] == [1, 1, 1]
    assert [len(m.batches[0][0]) for m in models] == [32, 32, 32]
    for model in models:
        model.batches.clear()
    reports: list[BatchReport] = []
    engine.add_batch_listener(reports.append)
    got = await engine.embed(EmbedRequest([*texts]))
    await engine.stop()
    np.testing.assert_array_equal(got.embeddings, want)
    np.testing.assert_allclose(got.embeddings, expected(single, texts), rtol=1e-6)
    # Every input ran exactly once, on some replica; the counters and listeners saw every batch.
    ran = sorted(ids for m in models for ids in ids_of(m))
    assert ran == sorted(e.ids.tolist() for e in single.encode(texts))
    batches = sum(len(m.batches) for m in models)
    assert engine.stats().batches_total == len(reports) == batches
    assert sum(r.size for r in reports) == 300


@asynchronous
async def test_two_batches_run_at_once_on_two_replicas() -> None:
    async with replicated(2, max_batch_requests=1) as (engine, models):
        for model in models:
            model.gate.clear()
        first = asyncio.create_task(engine.embed(EmbedRequest(["the first text"])))
        second = asyncio.create_task(engine.embed(EmbedRequest(["a second one"])))
        # Both forwards have begun while neither may finish: they run concurrently.
        await asyncio.gather(*(forward_started(model) for model in models))
        assert [len(m.batches) for m in models] == [1, 1]
        assert engine.stats().queue_size == 0
        for model in models:
            model.gate.set()
        results = await asyncio.gather(first, second)
    for text, result in zip(["the first text", "a second one"], results, strict=True):
        np.testing.assert_allclose(result.embeddings, expected(models[0], [text]), rtol=1e-6)


@asynchronous
async def test_a_queued_bulk_request_is_shared_by_idle_replicas() -> None:
    # One request's inputs fill several batches: the thread that forms the first wakes the other.
    async with replicated(2, max_batch_requests=2) as (engine, models):
        for model in models:
            model.gate.clear()
        task = asyncio.create_task(engine.embed(EmbedRequest([f"text {i}" for i in range(8)])))
        await asyncio.gather(*(forward_started(model) for model in models))
        for model in models:
            model.gate.set()
        result = await task
    assert sum(len(m.batches) for m in models) == 4 and all(m.batches for m in models)
    texts = [f"text {i}" for i in range(8)]
    np.testing.assert_allclose(result.embeddings, expected(models[0], texts), rtol=1e-6)


@asynchronous
async def test_a_failed_forward_on_one_replica_fails_only_its_batch() -> None:
    async with replicated(2, max_batch_requests=1) as (engine, models):
        broken = models[1]
        broken.fail_if = lambda _: True
        for model in models:
            model.gate.clear()
        texts = ["lands somewhere", "lands elsewhere"]
        tasks = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in texts]
        await asyncio.gather(*(forward_started(model) for model in models))
        on_broken = ids_of(broken)
        for model in models:
            model.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        stats = engine.stats()
    assert stats.batches_total == 2 and stats.batch_failures_total == 1
    for text, outcome in zip(texts, outcomes, strict=True):
        if models[0].encode([text])[0].ids.tolist() in on_broken:
            assert isinstance(outcome, BackendError)
        else:
            assert not isinstance(outcome, BaseException)
            np.testing.assert_allclose(outcome.embeddings, expected(models[0], [text]), rtol=1e-6)
    assert sum(isinstance(o, BackendError) for o in outcomes) == 1


@asynchronous
async def test_health_probes_every_replica() -> None:
    async with replicated(2) as (engine, models):
        models[1].fail_if = lambda _: True
        assert await engine.check_health()  # healthy: cheap, no probe
        assert [len(m.batches) for m in models] == [0, 0]
        engine._batcher.is_healthy = False  # as after a failed forward
        assert not await engine.check_health()  # the broken replica's probe decides
        assert [len(m.batches) for m in models] == [1, 1]
        models[1].fail_if = lambda _: False
        assert await engine.check_health()


@asynchronous
async def test_one_broken_replica_keeps_the_engine_unhealthy() -> None:
    async with replicated(2, max_batch_requests=1) as (engine, models):
        models[1].fail_if = lambda _: True
        for model in models:
            model.gate.clear()
        tasks = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in ("a", "b")]
        await asyncio.gather(*(forward_started(model) for model in models))
        models[1].gate.set()  # the broken replica fails first ...
        await until(lambda: engine.stats().batch_failures_total == 1)
        assert not engine.is_healthy
        models[0].gate.set()  # ... then the good one succeeds: still unhealthy
        await asyncio.gather(*tasks, return_exceptions=True)
        assert engine.stats().batches_total == 2 and not engine.is_healthy
        assert not await engine.check_health()  # the probe of every replica decides
        models[1].fail_if = lambda _: False
        assert await engine.check_health() and engine.is_healthy
        # Healthy again: a success on one replica after the other recovered keeps it so.
        result = await engine.embed(EmbedRequest(["c"]))
        np.testing.assert_allclose(result.embeddings, expected(models[0], ["c"]), rtol=1e-6)
        assert engine.is_healthy


def test_a_failed_warm_up_on_any_replica_starts_nothing() -> None:
    async def main() -> None:
        models = [FakeModel(), FakeModel()]
        models[1].fail_if = lambda encodings: len(encodings) == 1
        engine = Engine(models[0], EngineConfig(), replicas=models)
        with pytest.raises(BackendError):
            await engine.start()
        assert not engine.is_healthy
        with pytest.raises(Unhealthy):
            await engine.embed(EmbedRequest(["x"]))

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


@asynchronous
async def test_stop_drains_every_replica() -> None:
    models = [FakeModel(), FakeModel()]
    engine = Engine(models[0], EngineConfig(max_batch_requests=1), replicas=models)
    await engine.start()
    for model in models:
        while model.entered.acquire(blocking=False):
            pass
        model.gate.clear()
    texts = [f"queued text {i}" for i in range(6)]
    tasks = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in texts]
    await asyncio.gather(*(forward_started(model) for model in models))
    threads = list(engine._batcher._threads)
    await until(lambda: engine.stats().queue_size == 4)
    stopping = asyncio.create_task(engine.stop())
    await until(lambda: not engine.is_healthy)  # admission closed: stop() has begun
    with pytest.raises(Unhealthy):
        await engine.embed(EmbedRequest(["too late"]))
    assert not stopping.done()  # both replicas are held in a forward, four inputs queued
    for model in models:
        model.gate.set()
    results = await asyncio.gather(*tasks)
    await stopping
    for text, result in zip(texts, results, strict=True):
        np.testing.assert_allclose(result.embeddings, expected(models[0], [text]), rtol=1e-6)
    assert sum(len(m.batches) for m in models) == 1 + 1 + 6  # two warm-ups, six batches
    for thread in threads:
        await asyncio.to_thread(thread.join, TIMEOUT_S)
        assert not thread.is_alive()
    assert {t.name for t in threads} == {"tei-forward", "tei-forward-1"}


def test_the_batcher_needs_a_model() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        Engine(FakeModel(), EngineConfig(), replicas=())


@pytest.mark.parametrize(
    ("flag", "replicas", "cores", "want"),
    [
        (None, 1, 16, None),  # one replica: ORT's own default, as before replicas existed
        (3, 2, 16, 3),  # the flag means per replica
        (None, 2, 2, 1),
        (None, 4, 16, 4),
        (None, 3, 16, 5),
        (None, 3, 2, 1),  # more replicas than cores: one thread each
    ],
)
def test_replica_threads(flag: int | None, replicas: int, cores: int, want: int | None) -> None:
    assert replica_threads(flag, replicas, cores) == want


def test_replica_threads_refuses_zero_replicas() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        replica_threads(None, 0, 4)
