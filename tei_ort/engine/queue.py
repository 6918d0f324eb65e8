"""The batcher's queue and its batch-forming policy.

A request becomes a `Group` of per-input `Item`s. Each batch is anchored on one item and grown
around it: each step adds the queued item, from just below or just above in length (any request),
that adds the least padding, until the padded budget (longest x items) or the item cap is reached.

- The anchor is the oldest queued input of the request whose turn it is. Requests take turns in
  rounds: a request that anchored a batch and has inputs left goes to the next round; a new
  request joins half a round ahead of that, so it anchors the very next batch formed, before the
  next turn of any request already served (a one-query request behind a 2,000-input one waits
  for the batch running, not for the bulk request's next turn). A new request arriving once a
  newcomer of the same round has anchored goes after the re-queued ones: every request makes
  progress, however many new ones keep coming (no starvation).
- Little padding: items in a batch have neighbouring lengths, however the requests mixed them;
  with `max_padding_ratio`, the batch stops growing before its padding exceeds that fraction of
  its real tokens (plus PADDING_SLACK_TOKENS). On a CPU, a forward costs about the same per
  padded token at any batch size, so padding is pure loss: 8 mixed one-text requests padded
  to their longest ran at a third of the real tokens/s of the same texts one at a time.
- Cheap: forming costs O(batch + distinct lengths), not a sort of the queue (which can hold
  max_concurrent_requests x max_client_batch_size items).

Items of a client that went away stay where they are and are skipped (lazy deletion); `size`
counts live items only. Not thread-safe: the batcher holds its lock around every call.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import heapq
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
    SPARSE = "sparse"  # Model.forward_sparse: one (vocab,) row per input


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
    turn: tuple[int, int] = (0, 0)  # (round, arrival): its next turn; lower goes first
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


_arrivals = itertools.count()  # shared by all queues, so that kinds take turns too
# Padding any batch may carry whatever its real tokens (OpenVINO pads lengths to 16 anyway).
PADDING_SLACK_TOKENS = 16


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
        # Groups with queued items, by turn; entries whose turn is stale are skipped (lazy).
        self._rotation: list[tuple[tuple[int, int], Group[Any]]] = []
        # Rounds count in halves: a group served in round r returns in r + 2, a new one joins
        # in (the round of the last anchor) + 1.
        self._round = 0
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
        self._enter(group, self._round + 1)

    def _enter(self, group: Group[Any], round_: int) -> None:
        group.turn = (round_, next(_arrivals))
        heapq.heappush(self._rotation, (group.turn, group))

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
        return [g for turn, g in sorted(self._rotation) if g.turn == turn and self._is_waiting(g)]

    @staticmethod
    def _is_waiting(group: Group[Any]) -> bool:
        return bool(group.queued) and not group.closed

    def anchor(self) -> Item | None:
        """The next batch's anchor: the oldest queued item of the group whose turn it is."""
        while self._rotation:
            turn, group = self._rotation[0]
            if turn == group.turn and self._is_waiting(group):
                while not group.pending[0].is_live:
                    group.pending.popleft()
                return group.pending[0]
            heapq.heappop(self._rotation)
        return None

    def next_turn(self) -> tuple[int, int] | None:
        """The turn of the group that anchors the next batch (None: nothing queued)."""
        return self._rotation[0][0] if self.anchor() is not None else None

    def next_batch(
        self, max_tokens: int, max_items: int | None, max_padding_ratio: float | None = None
    ) -> list[Item]:
        """Take the next batch (empty if nothing is queued); see the module docstring."""
        head = self.anchor()
        if head is None:
            return []
        # Its turn is used: to the next round (if anything of it is left, see below).
        turn, group = heapq.heappop(self._rotation)
        self._round = turn[0]
        batch = [head]
        self._take(head)
        longest = head.length
        real = head.length
        # Two cursors over _lengths: `low` walks down from the head's own length (same length
        # first: no padding), `high` walks up from the next longer length.
        low = bisect.bisect_left(self._lengths, head.length)
        high = low + 1
        # False once an item in that direction no longer fits: those beyond it fit even less.
        can_grow = can_shrink = True
        # Every item holds at least one token, so the token budget also bounds the count.
        cap = max_items if max_items is not None else max_tokens
        while len(batch) < cap:
            below, low = self._live_at(low, -1) if can_shrink else (None, low)
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
            padded = new_longest * (len(batch) + 1)
            if padded > max_tokens:
                if pick is above:
                    can_grow = False
                    continue
                break  # a shorter item does not fit, so nothing does
            if max_padding_ratio is not None and padded > (
                (real + pick.length) * (1 + max_padding_ratio) + PADDING_SLACK_TOKENS
            ):
                if pick is above:
                    can_grow = False
                else:
                    can_shrink = False
                continue
            self._take(pick)
            batch.append(pick)
            longest = new_longest
            real += pick.length
        if group.queued:
            self._enter(group, turn[0] + 2)
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
