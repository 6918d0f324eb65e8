"""GET /health (also GET / and GET /ping), /info and /metrics. Open without the API key, as TEI."""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse

from tei_ort.engine.config import default_tokenization_workers
from tei_ort.package import Manifest, Task
from tei_ort.serve.memory import resident_bytes
from tei_ort.serve.metrics import CONTENT_TYPE
from tei_ort.serve.operations import JsonObject, ServeContext
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.replies import json_response
from tei_ort.serve.telemetry import Telemetry

HEALTH_PATHS = ("/health", "/", "/ping")


async def health(request: Request) -> HTTPResponse:
    models: ModelRegistry = request.app.ctx.models
    # TEI: 200 with an empty body, or 503 with its error body. Several models: healthy when
    # every one is (an orchestrator restarts the server for any that is not).
    if all([await ctx.engine.check_health() for ctx in models]):
        return HTTPResponse(status=200)
    return json_response({"error": "Model is unhealthy", "error_type": "Unhealthy"}, status=503)


def _labels(manifest: Manifest) -> JsonObject:
    id2label = {str(k): v for k, v in sorted(manifest.id2label.items())}
    return {"id2label": id2label, "label2id": {v: k for k, v in manifest.id2label.items()}}


def model_type(manifest: Manifest) -> JsonObject:
    """TEI's `model_type`: {embedding: {pooling}}, {classifier: {...}} or {reranker: {...}}."""
    pooling = manifest.pooling.value if manifest.pooling else "cls"
    by_task: dict[Task, JsonObject] = {
        Task.EMBEDDING: {"embedding": {"pooling": pooling}},
        Task.SPARSE_EMBEDDING: {"embedding": {"pooling": "splade"}},
        Task.CLASSIFICATION: {"classifier": _labels(manifest)},
        Task.RERANKER: {"reranker": _labels(manifest)},
    }
    return by_task[manifest.task]


# Which route gives which output, by task; BGE-M3's heads add theirs (see outputs).
_TASK_OUTPUTS: dict[Task, dict[str, str]] = {
    Task.EMBEDDING: {"/embed": "dense", "/embed_all": "token_embeddings"},
    Task.SPARSE_EMBEDDING: {"/embed_sparse": "sparse"},
    Task.CLASSIFICATION: {"/predict": "labels"},
    Task.RERANKER: {"/rerank": "scores", "/predict": "scores"},
}


def outputs(manifest: Manifest) -> dict[str, str]:
    """Ours, beside TEI's model_type (which names one pooling): every output the model gives and
    the route that gives it. BGE-M3 is a CLS embedder to TEI's fields, and also gives sparse
    weights on /embed_sparse and ColBERT multi-vectors on /embed_all."""
    result = dict(_TASK_OUTPUTS[manifest.task])
    heads = manifest.token_heads
    if heads is not None and heads.sparse is not None:
        result["/embed_sparse"] = "sparse"
    if heads is not None and heads.colbert is not None:
        result["/embed_all"] = "colbert"
    return result


def info_payload(ctx: ServeContext) -> JsonObject:
    manifest = ctx.engine.model.manifest
    limits = ctx.engine.config
    return {
        "model_id": ctx.model_id,
        "model_sha": ctx.revision,
        "model_dtype": ctx.dtype,
        "served_model_name": ctx.served_model_name,
        "model_type": model_type(manifest),
        "outputs": outputs(manifest),
        "max_concurrent_requests": limits.max_concurrent_requests,
        "max_input_length": manifest.max_input_length,
        "max_batch_tokens": limits.max_batch_tokens,
        "max_batch_requests": limits.max_batch_requests,
        "max_client_batch_size": limits.max_client_batch_size,
        "auto_truncate": limits.auto_truncate,
        "tokenization_workers": limits.tokenization_workers or default_tokenization_workers(),
        "version": ctx.version,
        "sha": None,
        "docker_label": None,
        # Ours, beside TEI's: what runs the model, on which CPU class.
        "provider": ctx.provider,
        "variant": ctx.variant,
        "isa_class": ctx.isa_class,
        "cpu": ctx.cpu,
        "variant_note": ctx.variant_note,
        "memory": _memory(ctx),
    }


def _memory(ctx: ServeContext) -> JsonObject | None:
    if ctx.memory is None:
        return None
    return {
        "graph_bytes": ctx.memory.graph_bytes,
        "rss_delta_bytes": ctx.memory.rss_delta_bytes,
        "load_rss_delta_bytes": ctx.memory.load_rss_delta_bytes,
        "warm_up_rss_delta_bytes": ctx.memory.warm_up_rss_delta_bytes,
    }


def server_info(models: ModelRegistry) -> JsonObject:
    """TEI's /info for the default model, as TEI clients parse it, and ours beside it: every
    served model's own /info and the process's resident memory now."""
    return {
        **info_payload(models.default),
        "models": [info_payload(ctx) for ctx in models],
        "resident_memory_bytes": resident_bytes(),
    }


async def info(request: Request) -> HTTPResponse:
    return json_response(server_info(request.app.ctx.models))


async def metrics(request: Request) -> HTTPResponse:
    telemetry: Telemetry = request.app.ctx.telemetry
    return HTTPResponse(telemetry.metrics.exposition(), content_type=CONTENT_TYPE)
