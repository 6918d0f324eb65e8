"""Admission: at most `limit` requests in flight (tokenization, queue and forward included).

A slot is taken without waiting: beyond the limit the answer is an immediate Overloaded (429, as
TEI), never a queue, so the work the engine holds stays bounded by limit x max_client_batch_size
inputs. TEI counts inputs rather than requests; that would refuse outright any client batch larger
than the limit (1,000 inputs against TEI's default 512), so here a request is one slot."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from tei_ort.errors import Overloaded, Unhealthy


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.refused = 0  # requests answered Overloaded
        self.is_open = False
        self._idle = asyncio.Event()

    def open(self) -> None:
        self._idle = asyncio.Event()  # for the running loop (an engine may restart in another)
        self.is_open = True

    async def close(self) -> None:
        """Refuse new requests (Unhealthy), then wait until every admitted one has left."""
        self.is_open = False
        while self.in_flight:
            self._idle.clear()  # set whenever in-flight reached zero before: stale until now
            await self._idle.wait()

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self.is_open:
            raise Unhealthy("the engine is not running")
        if self.in_flight >= self.limit:
            self.refused += 1
            raise Overloaded("Model is overloaded")
        self.in_flight += 1
        try:
            yield
        finally:  # also when the client goes away (the awaiting task is cancelled)
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
