"""Helpers for engine tests. The project has no pytest-asyncio: `asynchronous` runs a coroutine
test function under asyncio.run (pytest still sees its parameters through functools.wraps)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from tei_ort.engine import Engine, EngineConfig, ModelBackend
from tests.engine.fakes import FakeModel

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, None]])
# Every wait is on an event or a condition; this bound only turns a hang into a failure, so it is
# generous enough for a 2-core machine that other processes keep busy.
TIMEOUT_S = 60.0


def asynchronous(fn: F) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout=TIMEOUT_S * 2))

    return wrapper


@asynccontextmanager
async def running(model: ModelBackend, **config: Any) -> AsyncIterator[Engine]:
    engine = Engine(model, EngineConfig(**config))
    await engine.start()
    if isinstance(model, FakeModel):
        model.batches.clear()  # forget the warm-up forward
        while model.entered.acquire(blocking=False):
            pass
    try:
        yield engine
    finally:
        if isinstance(model, FakeModel):
            model.gate.set()
        await engine.stop()


async def until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Wait for a condition that other threads make true (tests only: the engine never polls)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def forward_started(model: FakeModel) -> None:
    """Wait until the fake's next forward pass has begun (and is blocked on the gate)."""
    if not await asyncio.to_thread(model.entered.acquire, True, TIMEOUT_S):
        raise AssertionError("no forward pass started")
