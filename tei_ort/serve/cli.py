"""`tei-serve`: settings -> model package -> runtime.Model -> Engine -> Sanic app -> listen.

The only module that wires concrete pieces together. The server listens once the engine has
started (model loaded and warmed), in one process: ONNX Runtime and the tokenizer use every core
already, so extra Sanic workers would only multiply the model's memory."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from sanic import Sanic

from tei_ort import __version__
from tei_ort.engine import Engine, EngineConfig
from tei_ort.errors import TeiOrtError, ValidationError
from tei_ort.package import Manifest, Pooling, Task
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import PROVIDERS
from tei_ort.runtime.providers import resolve as resolve_provider
from tei_ort.runtime.quantized_embeddings import read_ranges
from tei_ort.runtime.trial import batch_tokens
from tei_ort.serve import model_source
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.bind_address import bind_unlistening
from tei_ort.serve.grpc import attach_grpc
from tei_ort.serve.logs import configure_logging
from tei_ort.serve.operations import ServeContext
from tei_ort.serve.settings import Settings, load_settings
from tei_ort.serve.telemetry import Telemetry, TelemetryOptions

logger = logging.getLogger("tei_ort.serve")

# What /info's model_dtype says for each variant.
VARIANT_DTYPES = {
    "fp32": "float32",
    "fp16": "float16",
    "int8": "int8",
    "int8-w7": "int8",
    "bf16": "bfloat16",
}
# The prompt name that carries --default-prompt's literal text.
LITERAL_PROMPT = "--default-prompt"


def with_overrides(manifest: Manifest, settings: Settings) -> Manifest:
    """--pooling and the default prompt flags, applied to the manifest the engine reads."""
    changes: dict[str, object] = {}
    if settings.pooling is not None:
        pooling = Pooling(settings.pooling.replace("-", "_"))
        if (pooling is Pooling.SPLADE) != (manifest.task is Task.SPARSE_EMBEDDING):
            raise ValidationError(
                f"--pooling {pooling.value} does not fit a {manifest.task.value} model"
            )
        if manifest.task is Task.EMBEDDING:
            changes["pooling"] = pooling
    if settings.default_prompt is not None:
        changes["prompts"] = {**manifest.prompts, LITERAL_PROMPT: settings.default_prompt}
        changes["default_prompt_name"] = LITERAL_PROMPT
    elif settings.default_prompt_name is not None:
        if settings.default_prompt_name not in manifest.prompts:
            known = ", ".join(sorted(manifest.prompts)) or "none"
            raise ValidationError(
                f"--default-prompt-name {settings.default_prompt_name!r} is not one of this "
                f"model's prompts ({known})"
            )
        changes["default_prompt_name"] = settings.default_prompt_name
    return dataclasses.replace(manifest, **changes) if changes else manifest  # type: ignore[arg-type]


def build(settings: Settings) -> Sanic:  # type: ignore[type-arg]
    started = time.perf_counter()
    provider = resolve_provider(settings.provider)
    resolved = model_source.resolve(settings, provider.value)
    if settings.dense_path is not None:
        logger.warning("--dense-path ignored: the package carries its Dense layers")
    options = RuntimeOptions(
        # "auto" again rather than the provider resolved above: Model.load moves on from
        # OpenVINO when the package has no validated bf16 variant.
        provider=settings.provider,
        variant=settings.variant_name,
        intra_op_threads=settings.intra_op_threads,
        allow_spinning=settings.ort_spinning,
        allow_unvalidated=resolved.allow_unvalidated,
        # Variant checks of a read-only package (tei_ort.runtime.selection) go here.
        checks_dir=model_source.cache_root(settings) / "checks",
    )
    model = Model.load(resolved.path, options)
    target_batch_tokens, batch_note = batch_tokens(model, options)
    logger.info("batching: %s", batch_note)
    model.manifest = with_overrides(model.manifest, settings)
    shapes_started = time.perf_counter()
    if shapes := model.warm_up_shapes(settings.max_batch_tokens):
        logger.info(
            "ran each of %d batch shapes once (%s) in %.1f s",
            shapes,
            model.provider.value,
            time.perf_counter() - shapes_started,
        )
    config = EngineConfig(
        max_concurrent_requests=settings.max_concurrent_requests,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_requests=settings.max_batch_requests,
        max_client_batch_size=settings.max_client_batch_size,
        auto_truncate=settings.auto_truncate,
        tokenization_workers=settings.tokenization_workers,
        target_batch_tokens=target_batch_tokens,
        max_padding_ratio=PROVIDERS[model.provider].max_padding_ratio,
    )
    engine = Engine(model, config)
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
    )
    loaded = time.perf_counter()
    host = settings.bind_host()
    telemetry = Telemetry.build(
        ctx,
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

    app = create_app(
        ctx,
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
    settings = load_settings(argv)
    configure_logging(settings.log_level, json_output=settings.json_output)
    logger.debug("settings: %s", settings.redacted())
    try:
        app = build(settings)
    except TeiOrtError as exc:
        logger.error("cannot start: %s", exc)
        raise SystemExit(2) from exc
    run(app, settings.bind_host(), settings.port)


if __name__ == "__main__":
    main()
