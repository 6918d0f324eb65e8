"""POST / and /invocations (the hub, SageMaker) and POST /vertex: one body, routed by its shape
first and the model's task second, so that the hub's sentence-similarity body works without
TEI's TASK variable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pydantic

from tei_ort.errors import ValidationError
from tei_ort.package import Task
from tei_ort.serve.operations import Handler, JsonObject, Operation, ServeContext, validate
from tei_ort.serve.replies import Reply
from tei_ort.serve.routes import rerank_compat, tei

# The model's own route, as TEI's root route picks it (a re-ranker answers /predict to `inputs`).
BY_TASK: dict[Task, Handler] = {
    Task.EMBEDDING: tei.embed,
    Task.SPARSE_EMBEDDING: tei.embed_sparse,
    Task.CLASSIFICATION: tei.predict,
    Task.RERANKER: tei.predict,
}

# Body shapes that name their operation whatever the model, checked in order.
Shape = Callable[[JsonObject], bool]
BY_SHAPE: tuple[tuple[Shape, Handler], ...] = (
    (
        lambda b: isinstance(b.get("inputs"), dict) and "source_sentence" in b["inputs"],
        tei.similarity,
    ),
    (lambda b: "query" in b and "texts" in b, tei.rerank),
    (lambda b: "query" in b and "documents" in b, rerank_compat.infinity_rerank),
)


def pick(ctx: ServeContext, body: JsonObject) -> Handler:
    for matches, handler in BY_SHAPE:
        if matches(body):
            return handler
    task = ctx.engine.model.task
    if task is Task.EMBEDDING and ctx.root_is_similarity:
        return tei.similarity
    return BY_TASK[task]


async def root(ctx: ServeContext, body: JsonObject) -> Reply:
    return await pick(ctx, body)(ctx, body)


class VertexBody(pydantic.BaseModel):
    instances: list[JsonObject]


async def vertex(ctx: ServeContext, body: JsonObject) -> Reply:
    """TEI's Vertex wrapper: each instance is a rerank body if it has one's shape, else the
    model's own route; all run concurrently; any failure fails the whole request."""
    req = validate(VertexBody, body)
    if not req.instances:
        raise ValidationError("`instances` cannot be empty")
    replies = await asyncio.gather(*(root(ctx, instance) for instance in req.instances))
    numbers = sum(reply.numbers for reply in replies)
    return Reply({"predictions": [reply.payload for reply in replies]}, None, numbers)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/", root, pydantic.BaseModel, "The model's route, by model type and body shape", "Dispatch"
    ),
    Operation("/invocations", root, pydantic.BaseModel, "SageMaker: same as POST /", "Dispatch"),
    Operation(
        "/vertex",
        vertex,
        VertexBody,
        "Vertex AI: {instances: [...]}",
        "Dispatch",
        {"predictions": [[[0.0, 0.1]]]},
    ),
)
