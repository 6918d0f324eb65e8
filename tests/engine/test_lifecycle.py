"""Failures, health and lifecycle (start, warm-up, stop), against the fake model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tei_ort.engine import BatchReport, EmbedRequest, Engine, EngineConfig
from tei_ort.errors import BackendError, Unhealthy
from tests.engine.conftest import asynchronous, forward_started, running, until
from tests.engine.fakes import FakeModel
from tests.engine.test_batching import expected


def broken_listener(_: BatchReport) -> None:
    raise RuntimeError("a bug in the metrics")


@asynchronous
async def test_failed_batch_fails_only_its_requests_and_health_recovers() -> None:
    model = FakeModel()
    bad = int(model.encode(["explode"])[0].ids[1])
    model.fail_if = lambda encodings: any(bad in e.ids for e in encodings)
    async with running(model) as engine:
        model.gate.clear()
        failing = asyncio.create_task(engine.embed(EmbedRequest(["explode"])))
        await forward_started(model)
        fine = asyncio.create_task(engine.embed(EmbedRequest(["fine", "also fine"])))
        await until(lambda: engine.stats().queue_size == 2)
        model.gate.set()
        with pytest.raises(BackendError, match="fake forward failed"):
            await failing
        result = await fine
        np.testing.assert_allclose(result.embeddings, expected(model, ["fine", "also fine"]))
        assert engine.is_healthy  # the later batch succeeded

        reports: list[BatchReport] = []
        engine.add_batch_listener(reports.append)
        engine.add_batch_listener(broken_listener)  # changes nothing
        with pytest.raises(BackendError):
            await engine.embed(EmbedRequest(["explode"]))
        assert [(r.size, r.failed) for r in reports] == [(1, True)]
        assert not engine.is_healthy and engine.stats().batch_failures_total == 2
        model.fail_if = lambda _: True
        assert not await engine.check_health()
        model.fail_if = lambda _: False
        assert await engine.check_health()  # a real forward ran and succeeded
        assert engine.is_healthy


@asynchronous
async def test_any_runtime_exception_becomes_backend_error() -> None:
    model = FakeModel()

    def explode(_: object) -> bool:
        raise RuntimeError("onnxruntime exploded")

    async with running(model) as engine:
        model.fail_if = explode
        with pytest.raises(BackendError, match="onnxruntime exploded"):
            await engine.embed(EmbedRequest(["x"]))
        assert not engine.is_healthy
        model.fail_if = lambda _: False
        result = await engine.embed(EmbedRequest(["x"]))
        np.testing.assert_allclose(result.embeddings, expected(model, ["x"]), rtol=1e-6)
        assert engine.is_healthy


@asynchronous
async def test_a_crash_of_the_batcher_loop_fails_waiting_requests_instead_of_hanging() -> None:
    model = FakeModel()
    engine = Engine(model, EngineConfig())
    await engine.start()

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in the loop")

    engine._batcher._finish = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(BackendError, match="the batcher stopped"):
        await engine.embed(EmbedRequest(["x", "y"]))
    assert not engine.is_healthy
    with pytest.raises(Unhealthy):
        await engine.embed(EmbedRequest(["z"]))
    await engine.stop()


@asynchronous
async def test_stop_answers_admitted_requests_then_refuses() -> None:
    model = FakeModel()
    engine = Engine(model, EngineConfig())
    with pytest.raises(Unhealthy):
        await engine.embed(EmbedRequest(["too early"]))
    await engine.start()
    assert engine.is_healthy and await engine.check_health()
    await engine.embed(EmbedRequest(["done before stop"]))  # in-flight went back to zero once
    model.gate.clear()
    pending = asyncio.create_task(engine.embed(EmbedRequest(["in flight"])))
    await until(lambda: engine.stats().in_flight == 1)
    stopping = asyncio.create_task(engine.stop())
    await until(lambda: not engine.is_healthy)
    with pytest.raises(Unhealthy):
        await engine.embed(EmbedRequest(["too late"]))
    model.gate.set()
    result = await pending
    await stopping
    np.testing.assert_allclose(result.embeddings, expected(model, ["in flight"]), rtol=1e-6)
    assert not await engine.check_health()


@asynchronous
async def test_stop_waits_for_requests_still_tokenizing() -> None:
    model = FakeModel()
    engine = Engine(model, EngineConfig())
    await engine.start()
    await engine.embed(EmbedRequest(["done before stop"]))
    model.encode_gate.clear()
    # Two inputs: tokenized in the pool (one short input would be tokenized on the loop).
    pending = asyncio.create_task(engine.embed(EmbedRequest(["tokenizing", "in the pool"])))
    await until(lambda: engine.stats().in_flight == 1)
    stopping = asyncio.create_task(engine.stop())
    await until(lambda: not engine.is_healthy)  # stop() has begun
    for _ in range(100):  # loop turns, not time: a stop that did not wait would end in a few
        await asyncio.sleep(0)
    assert not stopping.done() and not pending.done()
    model.encode_gate.set()
    result = await pending
    await stopping
    np.testing.assert_allclose(
        result.embeddings, expected(model, ["tokenizing", "in the pool"]), rtol=1e-6
    )


@asynchronous
async def test_warm_up_failure_fails_start() -> None:
    model = FakeModel()
    model.fail_if = lambda _: True
    engine = Engine(model, EngineConfig())
    with pytest.raises(BackendError):
        await engine.start()
    assert not engine.is_healthy
    # The warm-up forward used the model's longest input.
    assert [len(ids) for batch in model.batches for ids in batch] == [32]


def test_config_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Engine(FakeModel(max_input_length=512), EngineConfig(max_batch_tokens=256))
    with pytest.raises(ValueError, match="max_concurrent_requests"):
        EngineConfig(max_concurrent_requests=0)
    assert EngineConfig().max_client_batch_size == 2048  # README: "defaults to 2048"
