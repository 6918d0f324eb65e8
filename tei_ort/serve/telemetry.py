"""Per-request telemetry: what the app does around each inference request (count it, time it,
trace it, label its failure), and the server's telemetry parts with their lifecycle.

    app._post -> Telemetry.request(...)          te_request_*, the request span, log trace ids
                   handler -> ObservedEngine      te_embed_* / te_predict_*, phase spans, batches

Metric names live in metrics.py; tracing in tracing.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span

from tei_ort.engine.types import Metadata
from tei_ort.serve import errors
from tei_ort.serve.metrics import Metrics, ModelSeries
from tei_ort.serve.metrics_listener import MetricsListener
from tei_ort.serve.operations import JsonObject, ServeContext
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.tracing import Tracing

logger = logging.getLogger(__name__)

# What nginx logs for a client that closed the connection before the answer: no HTTP status
# exists for it, and the span needs one.
CLIENT_CLOSED = 499
# The body field that carries a request's inputs, by route family; TEI's `method` label is
# "single" for one text (or one id list, or one predict pair) and "batch" for a list of them.
_INPUT_FIELDS = ("inputs", "input", "ids")
_ALWAYS_BATCH_FIELDS = ("texts", "documents", "instances")


def method_of(path: str, body: JsonObject) -> str:
    if any(name in body for name in _ALWAYS_BATCH_FIELDS):
        return "batch"
    for name in _INPUT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or all(isinstance(v, int) for v in value):
            return "single"  # a text, an id list, or an object (similarity's source + sentences)
        is_pair = path == "/predict" and len(value) <= 2 and all(isinstance(v, str) for v in value)
        return "single" if is_pair else "batch"
    return "single"


@dataclass
class RequestRecord:
    """One inference request in flight; engine calls made on its behalf find it in _CURRENT."""

    span: Span
    metered: bool
    # The `model` label: the default model until the request is routed, "" if it names no
    # served model.
    model: str
    method: str | None = None  # set once the body is parsed; counted then
    metadata: Metadata | None = None
    started: float = field(default_factory=time.perf_counter)


_CURRENT: ContextVar[RequestRecord | None] = ContextVar("tei_request", default=None)


def current_request() -> RequestRecord | None:
    return _CURRENT.get()


@dataclass(frozen=True)
class TelemetryOptions:
    otlp_endpoint: str | None = None
    otlp_service_name: str = "text-embeddings-inference.server"
    prometheus_port: int = 0  # 0: no separate listener (/metrics on the main port answers)
    prometheus_host: str = "127.0.0.1"
    export_delay_s: float = 1.0  # how long finished spans wait to be exported together


class Telemetry:
    def __init__(
        self, metrics: Metrics, tracing: Tracing, options: TelemetryOptions | None = None
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.listener = MetricsListener(metrics.exposition)
        self._options = options or TelemetryOptions()

    @property
    def default_model(self) -> str:
        return self.metrics.models[0].name if self.metrics.models else ""

    @classmethod
    def build(cls, models: ServeContext | ModelRegistry, options: TelemetryOptions) -> Telemetry:
        registry = ModelRegistry.of(models)
        metrics = Metrics([_series(ctx) for ctx in registry])
        for ctx in registry:
            if ctx.memory is not None:
                metrics.memory_measured(ctx.served_model_name, ctx.memory)
        tracing = Tracing(
            options.otlp_endpoint, options.otlp_service_name, export_delay_s=options.export_delay_s
        )
        return cls(metrics, tracing, options)

    def start(self) -> None:
        if self._options.prometheus_port:
            self.listener.start(self._options.prometheus_host, self._options.prometheus_port)

    def stop(self) -> None:
        self.listener.stop()
        self.tracing.shutdown()

    def count(self, record: RequestRecord, method: str) -> None:
        """Called once the body is parsed: TEI counts a request when it knows its method."""
        record.method = method
        if record.metered:
            self.metrics.request_started(method, record.model)

    @contextmanager
    def request(
        self, name: str, headers: Mapping[str, str], *, metered: bool = True
    ) -> Iterator[RequestRecord]:
        """Wraps one request's handling: the body must set `metadata` on success; any exception
        is labelled, traced and re-raised for the error handler to answer."""
        record = RequestRecord(
            self.tracing.start_request(name, headers), metered, self.default_model
        )
        token = _CURRENT.set(record)
        try:
            # The span is current while the handler runs, so log lines carry its trace id.
            with trace.use_span(
                record.span,
                end_on_exit=False,
                record_exception=False,
                set_status_on_exception=False,
            ):
                yield record
        except BaseException as exc:
            self._failed(record, exc)
            raise
        else:
            if metered:
                elapsed = time.perf_counter() - record.started
                self.metrics.request_succeeded(
                    record.method or "single", record.model, elapsed, record.metadata
                )
            Tracing.end_request(record.span, 200, None)
        finally:
            _CURRENT.reset(token)

    def _failed(self, record: RequestRecord, exc: BaseException) -> None:
        if record.metered:
            if record.method is None:  # failed before its body was parsed
                self.count(record, "single")
            self.metrics.request_failed(exc, record.model)
        cancelled = isinstance(exc, asyncio.CancelledError)
        status = CLIENT_CLOSED if cancelled else errors.classify(exc).status
        if cancelled:
            logger.debug("client went away; its request was dropped")
        Tracing.end_request(record.span, status, exc)


def _series(ctx: ServeContext) -> ModelSeries:
    info = {
        "model_id": ctx.model_id,
        "served_model_name": ctx.served_model_name,
        "task": ctx.engine.model.task.value,
        "variant": ctx.variant or "",
        "dtype": ctx.dtype,
        "provider": ctx.provider or "",
        "version": ctx.version,
        "isa_class": ctx.isa_class,
        "cpu": ctx.cpu,
    }
    manifest = ctx.engine.model.manifest
    return ModelSeries(ctx.served_model_name, ctx.engine.stats, info, manifest.max_input_length)
