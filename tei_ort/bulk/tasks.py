"""--task -> which engine call embeds a shard, and the Parquet columns its output becomes.

embed    Engine.embed          embedding: fixed_size_list<float32>[dimensions]
sparse   Engine.embed_sparse   indices: list<int32>, values: list<float32> (SPLADE)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tei_ort.engine import EmbedRequest, Engine

# The columns every shard has before the task's own: which input each vector belongs to.
ROW_FIELDS = (
    pa.field("id", pa.string()),  # --id-field's value; null without one
    pa.field("file", pa.string()),
    pa.field("row", pa.int64()),  # position in its file, 0-based
)


@dataclass(frozen=True)
class Embedded:
    columns: dict[str, pa.Array]  # the task's columns, one entry per input, in input order
    tokens: int


@dataclass(frozen=True)
class BulkTask:
    run: Callable[[Engine, EmbedRequest], Awaitable[Embedded]]
    fields: Callable[[int], tuple[pa.Field, ...]]  # dimensions -> the task's columns
    uses_normalize: bool


async def _dense(engine: Engine, request: EmbedRequest) -> Embedded:
    result = await engine.embed(request)
    vectors = result.embeddings  # (n, dimensions) float32
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return Embedded({"embedding": column}, result.metadata.compute_tokens)


def _dense_fields(dimensions: int) -> tuple[pa.Field, ...]:
    return (pa.field("embedding", pa.list_(pa.float32(), dimensions)),)


async def _sparse(engine: Engine, request: EmbedRequest) -> Embedded:
    result = await engine.embed_sparse(request)
    indices = pa.array([v.indices.astype(np.int32) for v in result.vectors], pa.list_(pa.int32()))
    values = pa.array([v.values.astype(np.float32) for v in result.vectors], pa.list_(pa.float32()))
    return Embedded({"indices": indices, "values": values}, result.metadata.compute_tokens)


def _sparse_fields(dimensions: int) -> tuple[pa.Field, ...]:
    return (pa.field("indices", pa.list_(pa.int32())), pa.field("values", pa.list_(pa.float32())))


TASKS: dict[str, BulkTask] = {
    "embed": BulkTask(_dense, _dense_fields, uses_normalize=True),
    # SPLADE weights are served unnormalized (as TEI's /embed_sparse); --normalize is ignored.
    "sparse": BulkTask(_sparse, _sparse_fields, uses_normalize=False),
}


def schema(task: BulkTask, dimensions: int) -> pa.Schema:
    return pa.schema([*ROW_FIELDS, *task.fields(dimensions)])
