"""The batcher's queue and its batch-forming policy.

A request becomes a `Group` of per-input `Item`s. Each batch is anchored on one item and grown
around it: each step adds the queued item, from just below or just above in length (any request),
that adds the least padding, until the padded budget (longest x items) or the item cap is reached.

- The anchor is the oldest queued input of the request whose turn it is; requests take turns
  round-robin (a request that anchored a batch goes to the back). A one-query request behind a
  2,000-input one waits about one batch for its turn, not for the whole bulk request, and every
  request makes progress: no starvation.
- Little padding: items in a batch have neighbouring lengths, however the requests mixed them.
- Cheap: forming costs O(batch + distinct lengths), not a sort of the queue (which can hold
  max_concurrent_requests x max_client_batch_size items).

Items of a client that went away stay where they are and are skipped (lazy deletion); `size`
counts live items only. Single-threaded: only the event loop touches a queue.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from tei_ort.tokenization import Encoded

T = TypeVar("T")
FloatArray = npt.NDArray[np.float32]


class ForwardKind(enum.Enum):
    """Which model call a batch makes; a batch never mixes them."""

    POOLED = "pooled"  # Model.forward: one row per input
    TOKENS = "tokens"  # Model.forward_tokens: one (len, hidden) array per input


@dataclass(eq=False)
class Group(Generic[T]):
    """One request's inputs: where their outputs land and when the request is done."""

    future: asyncio.Future[None]
    kind: ForwardKind
    # Applied in the forward thread to each input's raw output (a row, or (len, hidden)).
    convert: Callable[[FloatArray], T]
    outputs: list[T | None]
    remaining: int
    queued: int = 0  # items still waiting in the queue
    queued_tokens: int = 0  # their tokens
    pending: deque[Item] = field(default_factory=deque)  # its queued items, oldest first
    turn: int = 0  # position in the round-robin of requests; lower goes first
    queue_s_sum: float = 0.0
    inference_s_sum: float = 0.0
    # Set on the loop when the future completes (result, failure or the client's cancellation);
    # read by the forward thread to skip inputs nobody waits for. A bool read is atomic.
    closed: bool = False

    def deliver(self, index: int, output: T, queue_s: float, inference_s: float) -> None:
        self.outputs[index] = output
        self.queue_s_sum += queue_s
        self.inference_s_sum += inference_s
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


_turns = itertools.count()  # shared by all queues, so kinds take turns too


@dataclass(eq=False, slots=True)
class Item:
    group: Group[Any]
    index: int  # position in the request's inputs
    encoding: Encoded
    length: int
    enqueued_at: float  # time.perf_counter()
    taken: bool = False

    @property
    def is_live(self) -> bool:
        return not self.taken and not self.group.closed


class LengthQueue:
    def __init__(self) -> None:
        self._rotation: deque[Group[Any]] = deque()  # groups with queued items, in turn order
        self._buckets: dict[int, deque[Item]] = {}
        self._lengths: list[int] = []  # sorted keys of _buckets
        self.size = 0  # live items
        self.tokens = 0  # their real tokens: a full batch is ready when this reaches the budget

    def push(self, group: Group[Any], items: list[Item]) -> None:
        for item in items:
            bucket = self._buckets.get(item.length)
            if bucket is None:
                bucket = self._buckets[item.length] = deque()
                bisect.insort(self._lengths, item.length)
            bucket.append(item)
        group.pending.extend(items)
        tokens = sum(item.length for item in items)
        group.queued += len(items)
        group.queued_tokens += tokens
        self.size += len(items)
        self.tokens += tokens
        group.turn = next(_turns)
        self._rotation.append(group)

    def forget(self, group: Group[Any]) -> int:
        """The group closed: its queued items are dead. Returns how many were dropped."""
        dropped, group.queued = group.queued, 0
        self.size -= dropped
        self.tokens -= group.queued_tokens
        group.queued_tokens = 0
        group.pending.clear()
        return dropped

    def groups(self) -> list[Group[Any]]:
        """The groups with live items."""
        return [g for g in self._rotation if g.queued and not g.closed]

    def anchor(self) -> Item | None:
        """The next batch's anchor: the oldest queued item of the group whose turn it is."""
        while self._rotation:
            group = self._rotation[0]
            if group.queued and not group.closed:
                while not group.pending[0].is_live:
                    group.pending.popleft()
                return group.pending[0]
            self._rotation.popleft()
        return None

    def next_turn(self) -> int | None:
        """The turn of the group that anchors the next batch (None: nothing queued)."""
        return self._rotation[0].turn if self.anchor() is not None else None

    def next_batch(self, max_tokens: int, max_items: int | None) -> list[Item]:
        """Take the next batch (empty if nothing is queued); see the module docstring."""
        head = self.anchor()
        if head is None:
            return []
        # Its turn is used: to the back of the rotation (if anything of it is left, see below).
        group = self._rotation.popleft()
        batch = [head]
        self._take(head)
        longest = head.length
        # Two cursors over _lengths: `low` walks down from the head's own length (same length
        # first: no padding), `high` walks up from the next longer length.
        low = bisect.bisect_left(self._lengths, head.length)
        high = low + 1
        can_grow = True  # False once a longer item no longer fits: longer ones fit even less
        # Every item holds at least one token, so the token budget also bounds the count.
        cap = max_items if max_items is not None else max_tokens
        while len(batch) < cap:
            below, low = self._live_at(low, -1)
            above, high = self._live_at(high, +1) if can_grow else (None, high)
            # Padding each candidate adds: a shorter item pads itself up to `longest`; a longer
            # one pads every item already in the batch up to its own length.
            if below is not None and (
                above is None or longest - below.length <= (above.length - longest) * len(batch)
            ):
                pick = below
            elif above is not None:
                pick = above
            else:
                break
            new_longest = max(longest, pick.length)
            if new_longest * (len(batch) + 1) > max_tokens:
                if pick is above:
                    can_grow = False
                    continue
                break  # a shorter item does not fit, so nothing does
            self._take(pick)
            batch.append(pick)
            longest = new_longest
        if group.queued:
            group.turn = next(_turns)
            self._rotation.append(group)
        self._prune()
        return batch

    def _take(self, item: Item) -> None:
        item.taken = True
        item.group.queued -= 1
        item.group.queued_tokens -= item.length
        self.size -= 1
        self.tokens -= item.length

    def _live_at(self, index: int, step: int) -> tuple[Item | None, int]:
        """The first live item at _lengths[index], moving by `step` past exhausted buckets."""
        while 0 <= index < len(self._lengths):
            bucket = self._buckets[self._lengths[index]]
            while bucket and not bucket[0].is_live:
                bucket.popleft()
            if bucket:
                return bucket[0], index
            index += step
        return None, index

    def _prune(self) -> None:
        """Drop empty buckets (and dead items at their fronts): O(distinct lengths)."""
        kept = []
        for length in self._lengths:
            bucket = self._buckets[length]
            while bucket and not bucket[0].is_live:
                bucket.popleft()
            if bucket:
                kept.append(length)
            else:
                del self._buckets[length]
        self._lengths = kept
