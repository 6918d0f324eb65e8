"""Batching, admission and cancellation, against the fake model."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from tei_ort.engine import BatchReport, EmbedRequest
from tei_ort.errors import Overloaded
from tests.engine.conftest import asynchronous, forward_started, running, until
from tests.engine.fakes import FakeModel, vector


def expected(model: FakeModel, texts: list[str]) -> np.ndarray:
    rows = np.stack([vector(e.ids) for e in model.encode(texts)])  # (n, DIMS)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def texts_of_mixed_length(n: int) -> list[str]:
    # 3 to ~32 tokens, in an order that mixes short and long.
    return [f"item {i} " + "word " * ((i * 7) % 29) for i in range(n)]


@asynchronous
async def test_concurrent_requests_share_batches_and_match_one_at_a_time() -> None:
    model = FakeModel()
    texts = texts_of_mixed_length(60)
    async with running(model) as engine:
        alone = [(await engine.embed(EmbedRequest([t]))).embeddings[0] for t in texts]
        assert len(model.batches) == 60
        model.batches.clear()
        model.gate.clear()
        while model.entered.acquire(blocking=False):  # forget the 60 forwards above
            pass
        blocker = asyncio.create_task(engine.embed(EmbedRequest(["blocker"])))
        await forward_started(model)
        tasks = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in texts]
        # All 60 tokenized and queued while the blocker's forward runs.
        await until(lambda: engine.stats().in_flight == 61 and engine.stats().queue_size == 60)
        model.gate.set()
        together = [(await task).embeddings[0] for task in tasks]
        await blocker
    np.testing.assert_array_equal(np.stack(together), np.stack(alone))
    np.testing.assert_allclose(np.stack(together), expected(model, texts), rtol=1e-6)
    # The 60 clients went through a handful of shared batches, not 60: the blocker's, then
    # batches of neighbouring lengths whose padding stays under the limit (25% + 16 tokens).
    shared = model.batches[1:]
    assert [len(ids) for ids in model.batches[0]] == [4] and len(shared) <= 5
    assert sum(len(batch) for batch in shared) == 60 and max(len(b) for b in shared) >= 12
    for batch in shared:
        real = sum(len(ids) for ids in batch)
        assert max(len(ids) for ids in batch) * len(batch) <= real * 1.25 + 16


@asynchronous
async def test_without_a_padding_limit_a_batch_fills_the_budget() -> None:
    model = FakeModel()
    texts = texts_of_mixed_length(60)
    async with running(model, max_padding_ratio=None) as engine:
        model.gate.clear()
        blocker = asyncio.create_task(engine.embed(EmbedRequest(["blocker"])))
        await forward_started(model)
        tasks = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in texts]
        await until(lambda: engine.stats().queue_size == 60)
        model.gate.set()
        together = np.stack([(await task).embeddings[0] for task in tasks])
        await blocker
    np.testing.assert_allclose(together, expected(model, texts), rtol=1e-6)
    assert [len(batch) for batch in model.batches] == [1, 60]


@asynchronous
async def test_big_client_batch_is_split_under_the_token_budget_in_input_order() -> None:
    model = FakeModel()
    texts = texts_of_mixed_length(1000)
    async with running(model, max_batch_tokens=256) as engine:
        reports: list[BatchReport] = []
        engine.add_batch_listener(reports.append)
        result = await engine.embed(EmbedRequest([*texts]))
    np.testing.assert_allclose(result.embeddings, expected(model, texts), rtol=1e-6)
    assert sum(len(batch) for batch in model.batches) == 1000
    padded = [max(len(ids) for ids in batch) * len(batch) for batch in model.batches]
    assert max(padded) <= 256
    real = sum(len(ids) for batch in model.batches for ids in batch)
    assert len(model.batches) >= math.ceil(real / 256)
    # Batches are formed by length: padding stays under 5% of what the graph computes.
    assert real / sum(padded) > 0.95
    assert result.metadata.compute_tokens == real
    assert result.metadata.input_tokens == tuple(len(e) for e in model.encode(texts))
    # Listeners saw every forward pass, with the batches' real figures.
    assert [r.size for r in reports] == [len(batch) for batch in model.batches]
    assert [r.padded_tokens for r in reports] == padded and not any(r.failed for r in reports)
    assert sum(r.tokens for r in reports) == real


@asynchronous
async def test_a_small_request_does_not_wait_behind_a_bulk_one() -> None:
    model = FakeModel()
    async with running(model, max_batch_tokens=256) as engine:
        model.gate.clear()
        bulk = asyncio.create_task(engine.embed(EmbedRequest([*texts_of_mixed_length(1000)])))
        await forward_started(model)
        query = asyncio.create_task(engine.embed(EmbedRequest(["a quick question"])))
        # Everything queued: the bulk request's inputs outside the running batch (recorded as it
        # started), and the query, once tokenized. Admitted alone is not enough: it may still be
        # tokenizing when the forward frees up.
        queued = 1000 - len(model.batches[0]) + 1
        await until(lambda: engine.stats().in_flight == 2 and engine.stats().queue_size == queued)
        model.gate.set()
        result = await query
        await bulk
    ids = model.encode(["a quick question"])[0].ids.tolist()
    batch_of_query = next(i for i, b in enumerate(model.batches) if ids in [x.tolist() for x in b])
    # The bulk request's running batch, then the query's turn: it anchors the next batch formed
    # (of ~70), ahead of the bulk request's remaining inputs.
    assert batch_of_query == 1 and model.batches[1][0].tolist() == ids
    assert len(model.batches) > 50
    np.testing.assert_allclose(result.embeddings, expected(model, ["a quick question"]), rtol=1e-6)


@asynchronous
async def test_target_batch_tokens_forms_smaller_batches_under_the_cap() -> None:
    model = FakeModel()
    texts = texts_of_mixed_length(300)
    async with running(model, max_batch_tokens=4096, target_batch_tokens=128) as engine:
        result = await engine.embed(EmbedRequest([*texts]))
    np.testing.assert_allclose(result.embeddings, expected(model, texts), rtol=1e-6)
    padded = [max(len(ids) for ids in batch) * len(batch) for batch in model.batches]
    assert max(padded) <= 128 and sum(len(batch) for batch in model.batches) == 300


@asynchronous
async def test_max_batch_requests_caps_inputs_per_batch() -> None:
    model = FakeModel()
    async with running(model, max_batch_requests=7) as engine:
        result = await engine.embed(EmbedRequest([*texts_of_mixed_length(50)]))
    assert result.embeddings.shape == (50, 8)
    assert [len(batch) for batch in model.batches] == [7] * 7 + [1]


@asynchronous
async def test_the_next_batch_is_formed_when_the_forward_thread_frees_up() -> None:
    model = FakeModel()
    sixteen_tokens = "hello " * 14  # [CLS] + 14 + [SEP]
    async with running(model, max_batch_tokens=64) as engine:
        model.gate.clear()
        first = asyncio.create_task(engine.embed(EmbedRequest(["first"])))
        await forward_started(model)
        second = asyncio.create_task(engine.embed(EmbedRequest([sixteen_tokens] * 4)))
        await until(lambda: engine.stats().queue_size == 4)
        third = asyncio.create_task(engine.embed(EmbedRequest(["third"])))
        await until(lambda: engine.stats().queue_size == 5)
        # Nothing is formed ahead while the first forward runs: a full batch waits in the
        # queue like any other, so a later small request is not stuck behind it.
        stats = engine.stats()
        assert (stats.batch_next_size, stats.in_flight) == (1, 3)
        model.gate.set()
        await asyncio.gather(first, second, third)
    assert [len(batch) for batch in model.batches] == [1, 4, 1]


@asynchronous
async def test_a_small_request_runs_before_a_full_batch_queued_ahead_of_it() -> None:
    model = FakeModel()
    sixteen_tokens = "hello " * 14  # [CLS] + 14 + [SEP]
    async with running(model, max_batch_tokens=64) as engine:
        model.gate.clear()
        bulk = asyncio.create_task(engine.embed(EmbedRequest([sixteen_tokens] * 12)))
        await forward_started(model)  # the bulk request's first batch of 4
        query = asyncio.create_task(engine.embed(EmbedRequest(["query"])))
        await until(lambda: engine.stats().queue_size == 9)
        model.gate.set()
        await asyncio.gather(bulk, query)
    query_ids = model.encode(["query"])[0].ids.tolist()
    # The query anchors the batch after the running one (which it fills up with 3 of the bulk
    # request's inputs: 13 tokens of padding), although 8 bulk inputs were queued before it.
    assert [len(batch) for batch in model.batches] == [4, 4, 4, 1]
    assert model.batches[1][0].tolist() == query_ids


@asynchronous
async def test_a_light_batch_waits_for_the_forward_thread_and_takes_in_later_arrivals() -> None:
    model = FakeModel()
    async with running(model) as engine:
        model.gate.clear()
        first = asyncio.create_task(engine.embed(EmbedRequest(["first"])))
        await forward_started(model)
        later = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in ("b", "c", "d")]
        await until(lambda: engine.stats().queue_size == 3)
        assert engine.stats().batch_next_size == 1  # nothing formed: 3 inputs don't fill one
        model.gate.set()
        await asyncio.gather(first, *later)
    assert [len(batch) for batch in model.batches] == [1, 3]


@asynchronous
async def test_overload_is_immediate_and_admitted_requests_still_succeed() -> None:
    model = FakeModel()
    async with running(model, max_concurrent_requests=2) as engine:
        model.gate.clear()
        admitted = [asyncio.create_task(engine.embed(EmbedRequest([t]))) for t in ("a", "b")]
        await forward_started(model)
        await until(lambda: engine.stats().in_flight == 2)
        # Refused while the admitted two cannot move (their forward is held at the gate): an
        # answer that waited for a slot would never come, and the test would time out.
        with pytest.raises(Overloaded, match="Model is overloaded"):
            await engine.embed(EmbedRequest(["c"]))
        assert not any(task.done() for task in admitted)
        assert engine.stats().overloaded_total == 1
        model.gate.set()
        results = [await task for task in admitted]
        after = await engine.embed(EmbedRequest(["c"]))
    for result, text in zip(results, ("a", "b"), strict=True):
        np.testing.assert_allclose(result.embeddings, expected(model, [text]), rtol=1e-6)
    np.testing.assert_allclose(after.embeddings, expected(model, ["c"]), rtol=1e-6)


@asynchronous
async def test_cancelled_requests_are_dropped_before_the_forward_pass() -> None:
    model = FakeModel()
    sixteen_tokens = "world " * 14  # [CLS] + 14 + [SEP]
    async with running(model, max_batch_tokens=64) as engine:
        model.gate.clear()
        running_one = asyncio.create_task(engine.embed(EmbedRequest(["alpha"])))
        await forward_started(model)
        prepared = asyncio.create_task(engine.embed(EmbedRequest([sixteen_tokens] * 4)))
        await until(lambda: engine.stats().queue_size == 4 and engine.stats().in_flight == 2)
        queued = asyncio.create_task(engine.embed(EmbedRequest(["charlie", "charlie two"])))
        kept = asyncio.create_task(engine.embed(EmbedRequest(["delta"])))
        await until(lambda: engine.stats().queue_size == 7)
        prepared.cancel()
        queued.cancel()
        await asyncio.sleep(0)
        assert engine.stats().queue_size == 1
        model.gate.set()
        alpha, delta = await running_one, await kept
        assert prepared.cancelled() and queued.cancelled()
        assert engine.stats().dropped_inputs_total == 6
        assert engine.stats().in_flight == 0
    seen = model.seen_ids()
    never = [model.encode([t])[0].ids.tolist() for t in (sixteen_tokens, "charlie", "charlie two")]
    assert not [ids for ids in never if ids in seen]
    assert model.encode(["delta"])[0].ids.tolist() in seen
    assert [len(batch) for batch in model.batches] == [1, 1]  # the full batch never ran
    np.testing.assert_allclose(alpha.embeddings, expected(model, ["alpha"]), rtol=1e-6)
    np.testing.assert_allclose(delta.embeddings, expected(model, ["delta"]), rtol=1e-6)
