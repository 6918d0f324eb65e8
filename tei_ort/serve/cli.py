"""`tei-serve`: settings -> model package -> runtime.Model -> Engine -> Sanic app -> listen.

The only module that wires concrete pieces together. The server listens once the engine has
started (model loaded and warmed), in one process: ONNX Runtime and the tokenizer use every core
already, so extra Sanic workers would only multiply the model's memory."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pydantic
from sanic import Sanic

from tei_ort import __version__
from tei_ort.engine import Engine, EngineConfig
from tei_ort.errors import TeiOrtError
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import max_padding_ratio
from tei_ort.runtime.quantized_embeddings import read_ranges
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.bind_address import bind_unlistening
from tei_ort.serve.grpc import attach_grpc
from tei_ort.serve.loading import LoadedModel, load_model
from tei_ort.serve.logs import configure_logging
from tei_ort.serve.memory import ModelMemory, graph_bytes, grown_since, resident_bytes
from tei_ort.serve.operations import ServeContext
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.settings import Settings, build_parser, describe_invalid, load_settings
from tei_ort.serve.telemetry import Telemetry, TelemetryOptions

logger = logging.getLogger("tei_ort.serve")

# What /info's model_dtype says for each variant.
VARIANT_DTYPES = {
    "fp32": "float32",
    "fp16": "float16",
    "int8": "int8",
    "int8-w7": "int8",
    "int8-u8": "int8",
    "int8-wo": "int8",
    "bf16": "bfloat16",
}


@dataclass(frozen=True)
class _Served:
    """One model loaded for serving, with what the start-up summary reports of it."""

    ctx: ServeContext
    loaded: LoadedModel
    config: EngineConfig


def _serve_one(settings: Settings) -> _Served:
    """Load one model (its own engine, batcher and limits) and measure what it costs."""
    rss_before = resident_bytes()
    loaded_model = load_model(settings)
    model, resolved = loaded_model.model, loaded_model.resolved
    target_batch_tokens, batch_note = loaded_model.target_batch_tokens, loaded_model.batch_note
    config = EngineConfig(
        max_concurrent_requests=settings.max_concurrent_requests,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_requests=settings.max_batch_requests,
        max_client_batch_size=settings.max_client_batch_size,
        auto_truncate=settings.auto_truncate,
        tokenization_workers=settings.tokenization_workers,
        target_batch_tokens=target_batch_tokens,
        max_padding_ratio=max_padding_ratio(model.provider),
    )
    engine = Engine(model, config, replicas=loaded_model.forward_models)
    ctx = ServeContext(
        engine=engine,
        model_id=resolved.model_id,
        served_model_name=settings.served_model_name or resolved.model_id,
        revision=resolved.revision,
        dtype=VARIANT_DTYPES[model.variant.name.value],
        version=__version__,
        root_is_similarity=settings.task == "sentence-similarity",
        created=int(time.time()),
        provider=model.provider.value,
        variant=model.variant.name.value,
        variant_note="; ".join(n for n in (model.selection_note, f"batching: {batch_note}") if n),
        cpu=this_cpu().describe(),
        isa_class=this_cpu().isa_class.value,
        embedding_ranges=read_ranges(resolved.path),
        memory=ModelMemory(
            graph_bytes=graph_bytes(resolved.path / model.variant.file),
            load_rss_delta_bytes=grown_since(rss_before),
        ),
    )
    return _Served(ctx, loaded_model, config)


def build(settings: Settings) -> Sanic:  # type: ignore[type-arg]
    started = time.perf_counter()
    if settings.dense_path is not None:
        logger.warning("--dense-path ignored: the package carries its Dense layers")
    if settings.hf_api_token_given:
        logger.warning("--hf-api-token (HF_API_TOKEN) is deprecated: use --hf-token (HF_TOKEN)")
    if settings.uds_path is not None:
        logger.info("--uds-path unused: it is TEI's Python-backend socket; tei_ort has none")
    served = [_serve_one(one) for one in settings.per_model()]
    registry = ModelRegistry(tuple(one.ctx for one in served))
    ctx, config = served[0].ctx, served[0].config
    model, resolved = served[0].loaded.model, served[0].loaded.resolved
    loaded = time.perf_counter()
    host = settings.bind_host()
    telemetry = Telemetry.build(
        registry,
        TelemetryOptions(
            otlp_endpoint=settings.otlp_endpoint,
            otlp_service_name=settings.otlp_service_name,
            prometheus_port=settings.prometheus_port,
            prometheus_host=host,
        ),
    )

    def summary() -> None:
        ready = time.perf_counter()
        manifest = model.manifest
        logger.info(
            "Ready: %s (%s) task=%s provider=%s variant=%s cpu=%s dims=%d max_input_length=%d | "
            "max_concurrent_requests=%d max_batch_tokens=%d max_batch_requests=%s "
            "max_client_batch_size=%d auto_truncate=%s payload_limit=%d | load %.1f s, engine "
            "start and warm-up %.1f s | metrics on port %s, traces to %s | listening on "
            "http://%s:%d",
            resolved.model_id,
            resolved.origin,
            manifest.task.value,
            model.provider.value,
            model.variant.name.value,
            ctx.cpu,
            manifest.dimensions,
            manifest.max_input_length,
            config.max_concurrent_requests,
            config.max_batch_tokens,
            config.max_batch_requests,
            config.max_client_batch_size,
            config.auto_truncate,
            settings.payload_limit,
            loaded - started,
            ready - loaded,
            telemetry.listener.port or "-",
            settings.otlp_endpoint or "-",
            host,
            settings.port,
        )
        for other in served[1:]:
            manifest = other.loaded.model.manifest
            logger.info(
                "Also serving: %s as %r (%s) task=%s variant=%s max_batch_tokens=%d | "
                "memory: graph %d bytes, resident +%d bytes at load",
                other.ctx.model_id,
                other.ctx.served_model_name,
                other.loaded.resolved.origin,
                manifest.task.value,
                other.ctx.variant,
                other.config.max_batch_tokens,
                other.ctx.memory.graph_bytes if other.ctx.memory else 0,
                other.ctx.memory.load_rss_delta_bytes if other.ctx.memory else 0,
            )

    app = create_app(
        registry,
        payload_limit=settings.payload_limit,
        access=AccessPolicy(settings.api_key, settings.cors_allow_origin),
        telemetry=telemetry,
        on_started=summary,
    )
    if settings.grpc_port is not None:
        attach_grpc(app, host, settings.grpc_port)
    return app


def run(app: Sanic, host: str, port: int) -> None:  # type: ignore[type-arg]
    """Serve until SIGINT or SIGTERM, then drain in-flight requests and return. One process:
    Sanic workers would each load the model and keep their own metrics, so none are started.
    The socket listens once the engine has warmed up (see bind_unlistening)."""
    sock = bind_unlistening(host, port)
    app.run(sock=sock, single_process=True, access_log=False, motd=False)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except pydantic.ValidationError as exc:
        build_parser().error(describe_invalid(exc))  # usage and the reason, exit status 2
    configure_logging(
        settings.log_level, json_output=settings.json_output, spans=not settings.disable_spans
    )
    logger.debug("settings: %s", settings.redacted())
    try:
        app = build(settings)
    except TeiOrtError as exc:
        logger.error("cannot start: %s", exc)
        raise SystemExit(2) from exc
    run(app, settings.bind_host(), settings.port)


if __name__ == "__main__":
    main()
