"""From a handler's result to an HTTP response: orjson (numpy arrays serialized in C, never via
per-float Python), TEI's timing headers, and big bodies serialized off the event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import orjson
from sanic.response import HTTPResponse

from tei_ort.engine.types import Metadata

JSON = "application/json"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# Above this many numbers a body takes milliseconds to serialize: do it in a worker thread so the
# event loop keeps accepting and answering other requests meanwhile.
_INLINE_NUMBERS = 200_000
# TEI sends this constant whatever the hardware; clients that read it expect this value.
COMPUTE_TYPE = "gpu+optimized"


@dataclass(frozen=True)
class Reply:
    payload: object
    metadata: Metadata | None = None  # None: no x-* timing headers (/tokenize, /decode, /vertex)
    numbers: int = 0  # how many floats the payload carries, to decide where to serialize it


def _default(value: object) -> object:
    # orjson hands over what it cannot write natively, e.g. a non-contiguous array slice.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(payload: object) -> bytes:
    return orjson.dumps(payload, default=_default, option=_OPTIONS)


def metadata_headers(metadata: Metadata) -> dict[str, str]:
    """TEI's headers: whole milliseconds, as TEI's Duration::as_millis() writes them."""

    def ms(seconds: float) -> str:
        return str(int(seconds * 1000))

    return {
        "x-compute-type": COMPUTE_TYPE,
        "x-compute-time": ms(metadata.total_s),
        "x-compute-characters": str(metadata.compute_characters),
        "x-compute-tokens": str(metadata.compute_tokens),
        "x-total-time": ms(metadata.total_s),
        "x-tokenization-time": ms(metadata.tokenization_s),
        "x-queue-time": ms(metadata.queue_s),
        "x-inference-time": ms(metadata.inference_s),
    }


async def to_response(reply: Reply, status: int = 200) -> HTTPResponse:
    if reply.numbers > _INLINE_NUMBERS:
        body = await asyncio.to_thread(dumps, reply.payload)
    else:
        body = dumps(reply.payload)
    headers = metadata_headers(reply.metadata) if reply.metadata is not None else {}
    return HTTPResponse(body, status=status, headers=headers, content_type=JSON)


def json_response(payload: object, status: int = 200) -> HTTPResponse:
    return HTTPResponse(dumps(payload), status=status, content_type=JSON)
