"""OpenTelemetry tracing: one SERVER span per inference request, with child spans for its
tokenization, queue and inference phases, exported over OTLP to --otlp-endpoint.

- An incoming W3C `traceparent` (and `tracestate`) makes the request span a child of the caller's
  span, in the caller's trace.
- The phases run inside the engine (thread pool, batcher, forward thread) where no span can be
  opened; they are rebuilt from the engine's Metadata, laid end to end from the moment the engine
  was called: [tokenization][queue][inference]. For a multi-input request the engine reports
  means over its inputs, so the phases are the mean input's.
- Span attributes carry TEI's span fields (total_time, tokenization_time, queue_time,
  inference_time in milliseconds; compute_chars, compute_tokens).
- TEI exports OTLP/gRPC (port 4317); this exports OTLP/HTTP with protobuf (port 4318). An endpoint
  without a path gets OTLP's /v1/traces.
- The provider is this server's own (not the process-global one): tests run several servers in
  one process, each with its own endpoint. Without --otlp-endpoint nothing is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tei_ort.engine.types import Metadata

logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
_PROPAGATOR = TraceContextTextMapPropagator()
_NS = 1_000_000_000


def traces_url(endpoint: str) -> str:
    """http://collector:4318 -> http://collector:4318/v1/traces; a URL with a path is kept."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + TRACES_PATH
    return endpoint


class Tracing:
    def __init__(
        self, endpoint: str | None, service_name: str, *, export_delay_s: float = 1.0
    ) -> None:
        self._provider: TracerProvider | None = None
        if endpoint is None:
            self._tracer: trace.Tracer = trace.NoOpTracer()
            return
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=traces_url(endpoint)),
                schedule_delay_millis=int(export_delay_s * 1000),
            )
        )
        self._tracer = self._provider.get_tracer("tei_ort.serve")
        logger.info("tracing: OTLP/HTTP to %s as %s", traces_url(endpoint), service_name)

    @property
    def is_enabled(self) -> bool:
        return self._provider is not None

    def start_request(self, name: str, headers: Mapping[str, str]) -> Span:
        if self._provider is None:
            return trace.INVALID_SPAN
        parent = _PROPAGATOR.extract(headers)
        return self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER)

    def record_phases(self, parent: Span, engine_started_ns: int, metadata: Metadata) -> None:
        """Child spans for one engine call, and TEI's span fields on the request span."""
        if not parent.is_recording():
            return
        context = trace.set_span_in_context(parent)
        start = engine_started_ns
        for name, seconds in (
            ("tokenization", metadata.tokenization_s),
            ("queue", metadata.queue_s),
            ("inference", metadata.inference_s),
        ):
            end = start + int(seconds * _NS)
            self._tracer.start_span(name, context=context, start_time=start).end(end_time=end)
            start = end
        parent.set_attributes(
            {
                "total_time": metadata.total_s * 1000,
                "tokenization_time": metadata.tokenization_s * 1000,
                "queue_time": metadata.queue_s * 1000,
                "inference_time": metadata.inference_s * 1000,
                "compute_chars": metadata.compute_characters,
                "compute_tokens": metadata.compute_tokens,
            }
        )

    @staticmethod
    def end_request(span: Span, status: int, error: BaseException | None) -> None:
        if not span.is_recording():
            return
        span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter thread."""
        if self._provider is not None:
            self._provider.shutdown()
