"""The Sanic application: routes from the operation tables, one error handler, the access policy,
and the engine's lifecycle (started before the socket listens, drained after it closes)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse

from tei_ort.serve import errors, openapi
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.memory import grown_since, resident_bytes
from tei_ort.serve.observed_engine import ObservedEngine
from tei_ort.serve.operations import JsonObject, Operation, ServeContext, parse_json
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.replies import json_response, to_response
from tei_ort.serve.routes import (
    cohere_embed,
    dispatch,
    docs,
    health,
    ollama,
    openai,
    rerank_compat,
    tei,
)
from tei_ort.serve.telemetry import RequestRecord, Telemetry, TelemetryOptions, method_of

logger = logging.getLogger(__name__)

RouteHandler = Callable[[Request], Coroutine[Any, Any, HTTPResponse]]
OPERATIONS: tuple[Operation, ...] = (
    *tei.OPERATIONS,
    *openai.OPERATIONS,
    *rerank_compat.OPERATIONS,
    *dispatch.OPERATIONS,
    *cohere_embed.OPERATIONS,
    *ollama.OPERATIONS,
)
GET_ROUTES: dict[str, RouteHandler] = {
    **dict.fromkeys(health.HEALTH_PATHS, health.health),
    "/info": health.info,
    "/metrics": health.metrics,
    "/docs": docs.docs,
    docs.OPENAPI_PATH: docs.openapi_json,
}
# Routes whose clients expect OpenAI's error body.
OPENAI_PATHS = frozenset({*openai.PATHS, openai.MODELS_PATH})
ErrorBody = Callable[[BaseException], tuple[int, dict[str, object]]]
# Each API's error body on its own routes; TEI's everywhere else.
ERROR_BODIES: dict[str, ErrorBody] = {
    **dict.fromkeys(OPENAI_PATHS, errors.openai_body),
    **dict.fromkeys(cohere_embed.PATHS, cohere_embed.error_body),
    **dict.fromkeys(ollama.PATHS, ollama.error_body),
}
_names = itertools.count()
# Seconds Sanic waits, after SIGTERM, for in-flight requests before it drops their connections:
# under Kubernetes' default 30 s grace period, so that the process exits by itself (status 0)
# before the kubelet's SIGKILL.
GRACEFUL_SHUTDOWN_S = 25.0


def _post(operation: Operation) -> RouteHandler:
    span_name = f"POST {operation.path}"

    async def handle(request: Request) -> HTTPResponse:
        telemetry: Telemetry = request.app.ctx.telemetry
        with telemetry.request(span_name, request.headers, metered=operation.metered) as record:
            body = parse_json(request.body)
            ctx = _route(request.app.ctx.models, body, record)
            telemetry.count(record, method_of(operation.path, body))
            reply = await operation.handler(ctx, body)
            record.metadata = reply.metadata
            return await to_response(reply)

    return handle


def _route(models: ModelRegistry, body: JsonObject, record: RequestRecord) -> ServeContext:
    """The model the body's `model` field names (every API spells it `model`); the request's
    metrics are labelled with it, or with "" when it names none of ours."""
    try:
        ctx = models.resolve(body.get("model"))
    except errors.ModelNotFound:
        record.model = ""
        raise
    record.model = ctx.served_model_name
    return ctx


def _warmed_up(ctx: ServeContext, grown_bytes: int, telemetry: Telemetry) -> ServeContext:
    """The context with its engine's warm-up added to its memory figures (tei_ort/serve/memory)."""
    if ctx.memory is None:
        return ctx  # not loaded from a package (tests' fakes): nothing measured at load either
    memory = dataclasses.replace(ctx.memory, warm_up_rss_delta_bytes=grown_bytes)
    telemetry.metrics.memory_measured(ctx.served_model_name, memory)
    return dataclasses.replace(ctx, memory=memory)


async def _models(request: Request) -> HTTPResponse:
    return json_response(openai.models(request.app.ctx.models))


async def _error(request: Request, exc: Exception) -> HTTPResponse:
    render = ERROR_BODIES.get(request.path, errors.tei_body)
    status, body = render(exc)
    response = json_response(body, status=status)
    response.headers.update(request.app.ctx.access.cors_headers(request))
    return response


def create_app(
    models: ServeContext | ModelRegistry,
    *,
    payload_limit: int,
    access: AccessPolicy,
    telemetry: Telemetry | None = None,
    on_started: Callable[[], None] | None = None,
) -> Sanic:  # type: ignore[type-arg]  # Sanic's generics are for typed ctx/config; ours are plain
    """`models`: one model, or several (the first is the default). `telemetry` defaults to
    metrics on /metrics only (no tracing, no separate listener)."""
    registry = ModelRegistry.of(models)
    telemetry = telemetry or Telemetry.build(registry, TelemetryOptions())
    engines = [ctx.engine for ctx in registry]
    # Routes reach each engine through the telemetry decorator; start/stop/health pass through.
    registry = ModelRegistry(
        tuple(
            dataclasses.replace(
                ctx,
                engine=ObservedEngine(
                    ctx.engine,
                    telemetry.metrics.for_model(ctx.served_model_name),
                    telemetry.tracing,
                ),
            )
            for ctx in registry
        )
    )
    ctx = registry.default
    # Sanic keeps a registry of apps by name; tests build many apps in one process.
    app: Sanic = Sanic(f"tei_ort_{next(_names)}", configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = payload_limit
    app.config.MOTD = False
    app.config.ACCESS_LOG = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    # Long client batches (thousands of inputs) can take a while on a CPU.
    app.config.RESPONSE_TIMEOUT = 600
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = GRACEFUL_SHUTDOWN_S
    app.ctx.serve = ctx  # the default model (gRPC, and what /info describes first)
    app.ctx.models = registry
    app.ctx.telemetry = telemetry
    app.ctx.access = access
    app.ctx.openapi = openapi.build(OPERATIONS, ctx.version)

    for index, operation in enumerate(OPERATIONS):
        app.add_route(_post(operation), operation.path, methods=["POST"], name=f"post_{index}")
    for index, (path, handler) in enumerate(GET_ROUTES.items()):
        app.add_route(handler, path, methods=["GET"], name=f"get_{index}")
    app.add_route(_models, openai.MODELS_PATH, methods=["GET"], name="models")

    async def check_access(request: Request) -> HTTPResponse | None:
        preflight = access.preflight(request)
        if preflight is not None:
            return preflight
        access.check(request)
        return None

    async def add_cors(request: Request, response: HTTPResponse) -> None:
        response.headers.update(access.cors_headers(request))

    async def start_engine(app: Sanic) -> None:  # type: ignore[type-arg]
        # Before the socket listens: the first request finds every model loaded and warmed up.
        started = []
        for model, engine in zip(app.ctx.models, engines, strict=True):
            rss_before = resident_bytes()
            await engine.start()
            started.append(_warmed_up(model, grown_since(rss_before), telemetry))
        app.ctx.models = ModelRegistry(tuple(started))
        app.ctx.serve = app.ctx.models.default
        telemetry.start()
        if on_started is not None:
            on_started()

    async def stop_engine(app: Sanic) -> None:  # type: ignore[type-arg]
        # Sanic has stopped accepting and finished its in-flight requests; the engines drain.
        for engine in engines:
            await engine.stop()
        telemetry.stop()

    app.on_request(check_access)
    app.on_response(add_cors)  # type: ignore[no-untyped-call]  # untyped in Sanic 25
    app.error_handler.add(Exception, _error)
    app.before_server_start(start_engine)
    app.after_server_stop(stop_engine)
    return app
