"""Continuous token-budget batching: the run loop, the forward thread and health.

    request coroutines --submit--> LengthQueue (one per ForwardKind)
    run loop (event loop) --forms a batch--> forward thread (one; ORT releases the GIL)
    forward thread --outputs--> run loop --deliver--> request futures

At most two batches are handed to the forward thread: one running and one prepared, so that the
thread starts the next forward the moment the current one ends, without waiting for the event
loop (which may be busy parsing or serializing). A batch is prepared ahead only when the queue
holds enough tokens to fill it; otherwise it is formed when the thread frees up, and so takes in
everything that arrived during the running forward (fewer, fuller, better length-sorted batches).

The run loop is the one place that catches broad exceptions: a failed forward (BackendError from
the runtime, or anything else) fails only the requests in that batch, is logged once here, and
makes the engine unhealthy until a later forward succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from tei_ort.engine.backend import FloatArray, ModelBackend
from tei_ort.engine.config import BatchReport
from tei_ort.engine.queue import ForwardKind, Group, Item, LengthQueue
from tei_ort.errors import BackendError, Unhealthy
from tei_ort.tokenization import Encoded

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PIPELINE_DEPTH = 2  # batches handed to the forward thread: one running, one prepared


@dataclass(frozen=True)
class GroupTiming:
    queue_s: float  # mean over the request's inputs: enqueue -> start of its forward
    inference_s: float  # mean over the request's inputs: duration of its forward


@dataclass(frozen=True)
class _Outcome:
    items: list[Item]  # the live items the forward ran on (clients gone before it were skipped)
    outputs: list[Any]  # item.group.convert(raw output), same order
    started: float
    ended: float


@dataclass
class BatchCounters:
    next_size: int = 0  # inputs in the last batch formed (TEI's te_batch_next_size)
    next_tokens: int = 0  # real tokens in it (te_batch_next_tokens)
    next_padded_tokens: int = 0  # longest x inputs: what the padded graph computes
    batches: int = 0
    failures: int = 0
    dropped: int = 0  # inputs of cancelled requests (clients gone) that got no output


class Batcher:
    def __init__(
        self, model: ModelBackend, max_batch_tokens: int, max_batch_requests: int | None
    ) -> None:
        self._model = model
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_requests = max_batch_requests
        self._queues = {kind: LengthQueue() for kind in ForwardKind}
        self._pool: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        # Batches handed to the forward thread, oldest first, with their pending outputs.
        self._flights: deque[tuple[list[Item], asyncio.Future[_Outcome | BaseException]]] = deque()
        self.is_healthy = True
        self.counters = BatchCounters()
        self.listeners: list[Callable[[BatchReport], None]] = []

    @property
    def queue_size(self) -> int:
        return sum(queue.size for queue in self._queues.values())

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tei-forward")
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="tei-batcher")
        self._task.add_done_callback(self._on_loop_exit)

    async def stop(self) -> None:
        """Run what is queued, then end the loop and the forward thread."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # a crash was logged by _on_loop_exit already
            self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # idle by now; never block the loop
            self._pool = None

    async def run(
        self, encodings: Sequence[Encoded], kind: ForwardKind, convert: Callable[[FloatArray], T]
    ) -> tuple[list[T], GroupTiming]:
        """Queue one request's inputs and wait for all their outputs, in input order. Cancelling
        the caller cancels the group's future, which drops whatever is still queued."""
        if self._task is None or self._task.done() or self._stopping:
            raise Unhealthy("the engine is not running")
        if not encodings:
            return [], GroupTiming(0.0, 0.0)  # a group of none would never complete
        loop = asyncio.get_running_loop()
        group: Group[T] = Group(
            future=loop.create_future(),
            kind=kind,
            convert=convert,
            outputs=[None] * len(encodings),
            remaining=len(encodings),
        )
        queue = self._queues[kind]
        group.future.add_done_callback(lambda _: self._close(group, queue))
        now = time.perf_counter()
        queue.push(group, [Item(group, i, e, len(e), now) for i, e in enumerate(encodings)])
        self._wake.set()
        await group.future
        outputs = [o for o in group.outputs if o is not None]
        n = len(encodings)
        return outputs, GroupTiming(group.queue_s_sum / n, group.inference_s_sum / n)

    async def probe(self, encodings: Sequence[Encoded]) -> None:
        """One forward outside the queue (warm-up, health check); BackendError if it fails."""
        if self._pool is None:
            raise BackendError("the engine is not running")
        loop = asyncio.get_running_loop()
        error = await loop.run_in_executor(self._pool, self._probe, list(encodings))
        self.is_healthy = error is None
        if error is not None:
            raise error

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the loop itself: fail what waits rather than leave it hanging.
        logger.critical("the batcher loop crashed", exc_info=task.exception())
        self.is_healthy = False
        waiting = [g for q in self._queues.values() for g in q.groups()]
        waiting += [item.group for items, _ in self._flights for item in items]
        for group in waiting:
            if not group.future.done():
                group.future.set_exception(BackendError("the batcher stopped"))

    def _close(self, group: Group[Any], queue: LengthQueue) -> None:
        group.closed = True
        queued = queue.forget(group)
        if group.future.cancelled():
            # Queued inputs are skipped when batches are formed; those already in a formed batch
            # are skipped by the forward thread unless their forward has begun.
            self.counters.dropped += group.remaining
            logger.debug("client went away: %d inputs dropped (%d queued)", group.remaining, queued)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        flights = self._flights
        while True:
            # No await between clear() and wait(): every set() after it is seen.
            self._wake.clear()
            # The forward thread is a FIFO of one worker: flights end in order.
            while flights and flights[0][1].done():
                items, future = flights[0]
                self._finish(items, future.result())
                flights.popleft()  # only now: if _finish fails, _on_loop_exit still sees them
            while len(flights) < _PIPELINE_DEPTH and (not flights or self._can_fill_a_batch()):
                items = self._next_batch()
                if not items:
                    break
                future = loop.run_in_executor(self._pool, self._forward, items)
                future.add_done_callback(lambda _: self._wake.set())
                flights.append((items, future))
            if self._stopping and not flights and self.queue_size == 0:
                return
            await self._wake.wait()

    def _can_fill_a_batch(self) -> bool:
        tokens = sum(queue.tokens for queue in self._queues.values())
        items = self.queue_size
        cap = self._max_batch_requests
        return tokens >= self._max_batch_tokens or (cap is not None and items >= cap)

    def _next_batch(self) -> list[Item]:
        # Kinds share one round-robin of requests: neither starves the other.
        turns = [
            (turn, kind) for kind, q in self._queues.items() if (turn := q.next_turn()) is not None
        ]
        if not turns:
            return []
        kind = min(turns, key=lambda t: t[0])[1]
        items = self._queues[kind].next_batch(self._max_batch_tokens, self._max_batch_requests)
        counters = self.counters
        counters.next_size = len(items)
        counters.next_tokens = sum(item.length for item in items)
        counters.next_padded_tokens = max(item.length for item in items) * len(items)
        return items

    def _forward(self, items: list[Item]) -> _Outcome | BaseException:
        """In the forward thread. Returns the failure rather than raising it, so that the run
        loop handles both outcomes in one place, in order."""
        live = [item for item in items if not item.group.closed]
        started = time.perf_counter()
        if not live:
            return _Outcome([], [], started, started)
        encodings = [item.encoding for item in live]
        try:
            if live[0].group.kind is ForwardKind.TOKENS:
                raw = self._model.forward_tokens(encodings)  # n x (len, hidden)
            else:
                # Rows of the (batch, dims | vocab | labels) output, as views.
                raw = list(self._model.forward(encodings))
            if len(raw) != len(live):
                raise BackendError(f"the model returned {len(raw)} outputs for {len(live)} inputs")
            outputs = [item.group.convert(row) for item, row in zip(live, raw, strict=True)]
        except Exception as exc:  # anything the runtime raises fails this batch only
            return exc
        return _Outcome(live, outputs, started, time.perf_counter())

    def _probe(self, encodings: list[Encoded]) -> BackendError | None:
        try:
            self._model.forward(encodings)
        except Exception as exc:  # as in _forward: report, never raise into the loop
            return _as_backend_error(exc)
        return None

    def _finish(self, items: list[Item], outcome: _Outcome | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.counters.batches += 1
            self._fail(items, outcome)
            self._report(items, 0.0, failed=True)
            return
        if not outcome.items:
            return  # every client of the batch went away before its forward: nothing ran
        self.counters.batches += 1
        self.is_healthy = True
        inference_s = outcome.ended - outcome.started
        for item, output in zip(outcome.items, outcome.outputs, strict=True):
            if not item.group.closed:
                queue_s = outcome.started - item.enqueued_at
                item.group.deliver(item.index, output, queue_s, inference_s)
        self._report(outcome.items, inference_s, failed=False)

    def _report(self, items: list[Item], inference_s: float, failed: bool) -> None:
        longest = max((item.length for item in items), default=0)
        report = BatchReport(
            size=len(items),
            tokens=sum(item.length for item in items),
            padded_tokens=longest * len(items),
            inference_s=inference_s,
            failed=failed,
        )
        logger.debug("batch: %s", report)
        for listener in self.listeners:
            try:
                listener(report)
            except Exception:  # a metrics bug must not stop the batcher
                logger.exception("batch listener %r failed", listener)

    def _fail(self, items: list[Item], exc: BaseException) -> None:
        self.counters.failures += 1
        self.is_healthy = False
        groups = {id(item.group): item.group for item in items if not item.group.closed}
        logger.error(
            "forward pass failed for a batch of %d inputs from %d requests: %s",
            len(items),
            len(groups),
            exc,
            exc_info=exc if not isinstance(exc, BackendError) else None,
        )
        for group in groups.values():
            group.future.set_exception(_as_backend_error(exc))


def _as_backend_error(exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return BackendError(str(exc))
    error = BackendError(f"forward pass failed: {exc!r}")
    error.__cause__ = exc
    return error
