"""TEI's bidirectional streams: every message is answered as soon as it can be (the engine
batches concurrent messages together), and answers go back in the order the messages came."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")


async def ordered(
    requests: AsyncIterator[Q], answer: Callable[[Q], Coroutine[Any, Any, A]], window: int
) -> AsyncGenerator[A, None]:
    """Answers `requests` concurrently and yields the answers in request order.

    At most `window` messages are outstanding (being answered, or answered and not yet sent), so
    a client that reads slowly holds bounded memory. The first failed answer ends the stream
    with its exception (TEI's stream ends at its first error status); closing the generator
    (the client cancelled, or went away) cancels every outstanding answer."""
    slots = asyncio.Semaphore(window)
    pending: asyncio.Queue[asyncio.Task[A] | None] = asyncio.Queue()

    async def feed() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                pending.put_nowait(asyncio.create_task(answer(request)))
        finally:
            pending.put_nowait(None)  # end of the requests, or a read error (re-raised below)

    feeder = asyncio.create_task(feed())
    try:
        while (task := await pending.get()) is not None:
            try:
                result = await task
            finally:
                slots.release()
            yield result
        await feeder
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder
        while not pending.empty():
            _discard(pending.get_nowait())


def _discard(task: asyncio.Task[A] | None) -> None:
    if task is None:
        return
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: a failure after the stream ended is not "never seen"
        return
    task.cancel()
