"""What the batcher keeps and hands around: per-request timings, a forward's outcome, the counters
metrics read, probes, and the two helpers that move results onto the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeVar

from tei_ort.engine.queue import Item
from tei_ort.errors import BackendError
from tei_ort.tokenization import Encoded

T = TypeVar("T")


@dataclass(frozen=True)
class GroupTiming:
    queue_s: float  # mean over the request's inputs: enqueue -> start of its forward
    inference_s: float  # mean over the request's inputs: duration of its forward


@dataclass(frozen=True)
class Outcome:
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


@dataclass
class Probe:
    encodings: list[Encoded]
    future: asyncio.Future[BackendError | None]


def resolve(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # its awaiting task may have been cancelled
        future.set_result(value)


def as_backend_error(exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return BackendError(str(exc))
    error = BackendError(f"forward pass failed: {exc!r}")
    error.__cause__ = exc
    return error
