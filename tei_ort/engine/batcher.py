"""Continuous token-budget batching: the forward threads, the queue they take batches from, health.

    request coroutines --submit (lock)--> LengthQueue (one per ForwardKind)
    forward thread (one per replica): forms the next batch (lock) -> forward -> outputs to the loop
    event loop --deliver--> request futures

The forward thread forms each batch itself, the moment the previous forward ends: it never
waits for the event loop (which may be busy parsing or serializing), and the batch takes in
everything that arrived until then, so a small request that arrives during a forward runs in the
very next batch (see queue.py for turns), never behind a batch prepared before it came. Forming a
batch costs O(batch + distinct lengths) under the lock; the loop holds the same lock only to
push a request's inputs or drop a cancelled one's.

Replicas (--engine-replicas): one forward thread per backend (each its own ORT session and thread
pool), all taking batches from the one queue, so a second batch runs while the first does and
every batch, failure and counter is the batcher's own: metrics add up by construction. A thread
that forms a batch and leaves inputs queued wakes another, so idle replicas pick up the rest.

Delivery runs on the event loop, the one place that catches broad exceptions: a failed forward
(BackendError from the runtime, or anything else) fails only the requests in that batch, is
logged once here, and makes the engine unhealthy until a later forward on that replica succeeds
(while no other replica's last one failed). A bug in delivery itself fails every waiting request
and stops the batcher rather than leave them hanging.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tei_ort.engine.backend import FloatArray, ModelBackend
from tei_ort.engine.batch_types import (
    BatchCounters,
    GroupTiming,
    Outcome,
    Probe,
    as_backend_error,
    resolve,
)
from tei_ort.engine.config import BatchReport
from tei_ort.engine.queue import ForwardKind, Group, Item, LengthQueue
from tei_ort.errors import BackendError, Unhealthy
from tei_ort.tokenization import Encoded

# The model call each kind of batch makes. Pooled and sparse: rows of the (batch, dims | vocab |
# labels) output, as views; tokens: one (len, hidden) array per input.
_FORWARDS: dict[ForwardKind, Callable[[ModelBackend, list[Encoded]], Sequence[FloatArray]]] = {
    ForwardKind.POOLED: lambda model, encodings: list(model.forward(encodings)),
    ForwardKind.TOKENS: lambda model, encodings: model.forward_tokens(encodings),
    ForwardKind.SPARSE: lambda model, encodings: list(model.forward_sparse(encodings)),
}

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Batcher:
    def __init__(
        self,
        models: Sequence[ModelBackend],
        max_batch_tokens: int,
        max_batch_requests: int | None,
        max_padding_ratio: float | None = None,
    ) -> None:
        if not models:
            raise ValueError("the batcher needs at least one model to run forwards on")
        self._models = tuple(models)  # one forward thread each
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_requests = max_batch_requests
        self._max_padding_ratio = max_padding_ratio
        self._queues = {kind: LengthQueue() for kind in ForwardKind}
        # Guards the queues, _probes, _running, _alive and _stopping; forward threads wait on it.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        # Per replica: forwards outside the queue (warm-up, health), run first by that replica.
        self._probes: list[deque[Probe]] = [deque() for _ in self._models]
        self._running: list[list[Item]] = [[] for _ in self._models]  # each thread's batch
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._alive = 0  # forward threads not yet returned
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[None] | None = None
        self.is_healthy = True
        # Each replica's last forward succeeded: one broken replica keeps the engine unhealthy
        # however many batches the others run, until a probe of every replica passes.
        self._replica_ok = [True] * len(self._models)
        self.counters = BatchCounters()
        self.listeners: list[Callable[[BatchReport], None]] = []

    @property
    def queue_size(self) -> int:
        return sum(queue.size for queue in self._queues.values())

    @property
    def replicas(self) -> int:
        return len(self._models)

    @property
    def _is_running(self) -> bool:
        return bool(self._threads) and not self._stopping

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._stopping = False
        self._alive = len(self._models)
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(index,),
                name="tei-forward" if index == 0 else f"tei-forward-{index}",
                daemon=True,
            )
            for index in range(len(self._models))
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Run what is queued, then end every forward thread."""
        if not self._threads or self._exited is None:
            return
        with self._work:
            self._stopping = True
            self._work.notify_all()
        await self._exited
        self._threads = []

    async def run(
        self, encodings: Sequence[Encoded], kind: ForwardKind, convert: Callable[[FloatArray], T]
    ) -> tuple[list[T], GroupTiming]:
        """Queue one request's inputs and wait for all their outputs, in input order. Cancelling
        the caller cancels the group's future, which drops whatever is still queued."""
        if not self._is_running:
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
        items = [Item(group, i, e, len(e), now) for i, e in enumerate(encodings)]
        with self._work:
            queue.push(group, items)
            self._work.notify()
        await group.future
        outputs = [o for o in group.outputs if o is not None]
        n = len(encodings)
        return outputs, GroupTiming(group.queue_s_sum / n, group.inference_s_sum / n)

    async def probe(self, encodings: Sequence[Encoded]) -> None:
        """One forward outside the queue on every replica (warm-up, health check): BackendError
        if any fails, since a request may land on any of them."""
        if not self._is_running or self._loop is None:
            raise BackendError("the engine is not running")
        loop = self._loop
        probes = [Probe(list(encodings), loop.create_future()) for _ in self._models]
        with self._work:
            for queue, probe in zip(self._probes, probes, strict=True):
                queue.append(probe)
            self._work.notify_all()  # each probe is for one particular thread
        outcomes = await asyncio.gather(*(p.future for p in probes))
        self._replica_ok = [e is None for e in outcomes]
        errors = [e for e in outcomes if e is not None]
        self.is_healthy = not errors
        if errors:
            raise errors[0]

    def _close(self, group: Group[Any], queue: LengthQueue) -> None:
        group.closed = True
        with self._lock:
            queued = queue.forget(group)
        if group.future.cancelled():
            # Queued inputs are skipped when batches are formed; those already in a formed batch
            # are skipped by the forward thread unless their forward has begun.
            self.counters.dropped += group.remaining
            logger.debug("client went away: %d inputs dropped (%d queued)", group.remaining, queued)

    # -- the forward thread -------------------------------------------------------------------

    def _serve(self, index: int) -> None:
        try:
            self._serve_until_stopped(index)
        except BaseException as exc:  # a bug in this thread: fail what waits, as _deliver does
            logger.critical("forward thread %d crashed", index, exc_info=exc)
            self._call_soon(self._break, [])
        finally:
            with self._lock:
                self._alive -= 1
                last = self._alive == 0
            # The last thread out: every delivery was queued on the loop before this.
            if last and self._exited is not None:
                self._call_soon(resolve, self._exited, None)

    def _serve_until_stopped(self, index: int) -> None:
        model, probes = self._models[index], self._probes[index]
        while True:
            with self._work:
                while not (probes or self.queue_size or self._stopping):
                    self._work.wait()
                probe = probes.popleft() if probes else None
                items = [] if probe is not None else self._next_batch()
                if probe is None and not items:
                    return  # stopping, and nothing is left
                self._running[index] = items
                if self.queue_size:
                    self._work.notify()  # more queued: another idle replica can take it
            if probe is not None:
                self._call_soon(resolve, probe.future, self._probe(model, probe.encodings))
            else:
                self._call_soon(self._deliver, index, items, self._forward(model, items))

    def _call_soon(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody waits any more
            logger.debug("event loop closed; forward thread result dropped")

    def _next_batch(self) -> list[Item]:
        """Under the lock. Kinds share one order of turns: neither starves the other."""
        turns = [
            (turn, kind) for kind, q in self._queues.items() if (turn := q.next_turn()) is not None
        ]
        if not turns:
            return []
        kind = min(turns, key=lambda t: t[0])[1]
        items = self._queues[kind].next_batch(
            self._max_batch_tokens, self._max_batch_requests, self._max_padding_ratio
        )
        counters = self.counters
        counters.next_size = len(items)
        counters.next_tokens = sum(item.length for item in items)
        counters.next_padded_tokens = max(item.length for item in items) * len(items)
        return items

    def _forward(self, model: ModelBackend, items: list[Item]) -> Outcome | BaseException:
        """In the forward thread. Returns the failure rather than raising it, so that the run
        loop handles both outcomes in one place, in order."""
        live = [item for item in items if not item.group.closed]
        started = time.perf_counter()
        if not live:
            return Outcome([], [], started, started)
        encodings = [item.encoding for item in live]
        try:
            raw = _FORWARDS[live[0].group.kind](model, encodings)
            if len(raw) != len(live):
                raise BackendError(f"the model returned {len(raw)} outputs for {len(live)} inputs")
            outputs = [item.group.convert(row) for item, row in zip(live, raw, strict=True)]
        except Exception as exc:  # anything the runtime raises fails this batch only
            return exc
        return Outcome(live, outputs, started, time.perf_counter())

    def _probe(self, model: ModelBackend, encodings: list[Encoded]) -> BackendError | None:
        try:
            model.forward(encodings)
        except Exception as exc:  # as in _forward: report, never raise into the loop
            return as_backend_error(exc)
        return None

    # -- on the event loop ---------------------------------------------------------------------

    def _deliver(self, index: int, items: list[Item], outcome: Outcome | BaseException) -> None:
        try:
            self._finish(index, items, outcome)
        except Exception as exc:  # a bug here: fail what waits rather than leave it hanging
            logger.critical("the batcher failed to deliver a batch", exc_info=exc)
            self._break(items)

    def _break(self, items: list[Item]) -> None:
        self.is_healthy = False
        with self._work:
            self._stopping = True
            self._work.notify_all()
            waiting = [g for q in self._queues.values() for g in q.groups()]
            running = [item for batch in self._running for item in batch]
            waiting += [item.group for item in [*items, *running]]
        for group in waiting:
            if not group.future.done():
                group.future.set_exception(BackendError("the batcher stopped"))

    def _finish(self, index: int, items: list[Item], outcome: Outcome | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.counters.batches += 1
            self._replica_ok[index] = False
            self._fail(items, outcome)
            self._report(items, 0.0, failed=True)
            return
        if not outcome.items:
            return  # every client of the batch went away before its forward: nothing ran
        self.counters.batches += 1
        self._replica_ok[index] = True
        self.is_healthy = all(self._replica_ok)
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
            group.future.set_exception(as_backend_error(exc))
