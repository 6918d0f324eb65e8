"""The batch-forming policy on its own: budget, length grouping, no starvation, dropped groups."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import numpy as np
import pytest

from tei_ort.engine.queue import ForwardKind, Group, Item, LengthQueue
from tei_ort.tokenization import Encoded


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def push(queue: LengthQueue, loop: asyncio.AbstractEventLoop, lengths: list[int]) -> Group[object]:
    group: Group[object] = Group(
        loop.create_future(), ForwardKind.POOLED, lambda r: r, [None] * len(lengths), len(lengths)
    )
    items = []
    for index, length in enumerate(lengths):
        ids = np.ones(length, dtype=np.int64)
        items.append(Item(group, index, Encoded(ids, ids), length, 0.0))
    queue.push(group, items)
    return group


def drain(queue: LengthQueue, max_tokens: int, max_items: int | None = None) -> list[list[Item]]:
    batches = []
    while batch := queue.next_batch(max_tokens, max_items):
        batches.append(batch)
    return batches


def test_batches_take_neighbouring_lengths(loop: asyncio.AbstractEventLoop) -> None:
    queue = LengthQueue()
    push(queue, loop, [10, 50, 11, 49, 9, 51])
    batches = drain(queue, max_tokens=160)
    # Arrival order would batch (10, 50, 11) and pad 10 and 11 to 50.
    assert [sorted(i.length for i in batch) for batch in batches] == [[9, 10, 11], [49, 50, 51]]


def test_requests_take_turns_and_each_anchors_its_oldest_input(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = LengthQueue()
    # A long input first, then many short ones: the long one must not wait behind them.
    bulk = push(queue, loop, [32] + [4] * 40)
    first = queue.next_batch(64, None)
    assert [i.length for i in first] == [32, 4]
    # A one-input request arriving now anchors the next batch, ahead of the bulk request's next
    # turn: it does not wait for the 39 inputs left of the bulk request.
    single = push(queue, loop, [30])
    second = queue.next_batch(64, None)
    assert second[0].group is single and [i.length for i in second] == [30, 4]
    # A request arriving once that newcomer has anchored waits for the bulk request's next
    # turn: newcomers cannot starve a request already served.
    later = push(queue, loop, [30])
    assert [i.group for i in queue.next_batch(64, None)] == [bulk] * 16
    assert queue.next_batch(64, None)[0].group is later
    assert all(i.group is bulk for i in queue.next_batch(64, None))
    # Every batch holds the anchor (the oldest input of the request whose turn it is), so
    # every request progresses.
    rng = random.Random(0)
    for _ in range(30):
        push(queue, loop, [rng.randint(1, 64) for _ in range(rng.randint(1, 20))])
    while queue.size:
        anchor = queue.anchor()
        assert anchor is not None and anchor in queue.next_batch(256, None)


def test_budget_cap_and_padding_on_a_random_mix(loop: asyncio.AbstractEventLoop) -> None:
    rng = random.Random(1)
    lengths = [rng.choice([rng.randint(5, 20), rng.randint(100, 256)]) for _ in range(2000)]
    queue = LengthQueue()
    group = push(queue, loop, lengths)
    assert queue.size == 2000 and group.queued == 2000
    batches = drain(queue, max_tokens=4096, max_items=64)
    taken = sorted(i.index for batch in batches for i in batch)
    assert taken == list(range(2000)) and queue.size == 0 and group.queued == 0
    padded = [max(i.length for i in batch) * len(batch) for batch in batches]
    assert max(padded) <= 4096 and max(len(batch) for batch in batches) == 64
    assert sum(lengths) / sum(padded) > 0.95  # arrival-order batches of 64 pad to ~0.33


def test_padding_limit_keeps_short_inputs_out_of_long_batches(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = LengthQueue()
    push(queue, loop, [100, 12, 96, 10, 11, 30])
    batches = drain(queue, max_tokens=2048, max_items=None)
    assert len(batches) == 1  # without a limit: everything, padded to 100 (2.3x its 259 tokens)
    queue = LengthQueue()
    push(queue, loop, [100, 12, 96, 10, 11, 30])
    limited = []
    while batch := queue.next_batch(2048, None, max_padding_ratio=0.25):
        limited.append(sorted(i.length for i in batch))
    # Padding at most 25% of a batch's real tokens + 16: 30 would pad [96, 100, 30] to 300 >
    # 226 * 1.25 + 16, and [10, 11, 12, 30] to 120 > 63 * 1.25 + 16.
    assert limited == [[96, 100], [10, 11, 12], [30]]


def test_closed_groups_are_skipped(loop: asyncio.AbstractEventLoop) -> None:
    queue = LengthQueue()
    gone = push(queue, loop, [8, 8, 8])
    kept = push(queue, loop, [8, 9])
    gone.closed = True
    assert queue.forget(gone) == 3
    assert queue.size == 2 and queue.groups() == [kept]
    batches = drain(queue, max_tokens=100)
    assert [[i.group for i in batch] for batch in batches] == [[kept, kept]]
    assert queue.anchor() is None and queue.size == 0
