"""Prometheus metrics: every metric name and label value lives here, with TEI's names, labels,
buckets and meaning (text-embeddings-router's prometheus.rs, http/server.rs, core/infer.rs), plus
what TEI lacks and operators ask for (process memory, model info, requests in flight).

    te_request_count{method}     HTTP requests to an inference route; method = single | batch
    te_request_success{method}   ... that succeeded
    te_request_failure{err}      ... that failed, err from FAILURE_LABELS (counted once per request)
    te_request_duration          end-to-end seconds of successful requests (and its parts below)
    te_request_{tokenization,queue,inference}_duration   per request: the mean over its inputs
    te_request_input_length      tokens per input
    te_{embed,predict}_{count,success}                   per input, as TEI's core counts them
    te_{embed,predict}_{,tokenization_,queue_,inference_}duration
    te_queue_size                inputs waiting for a batch (read from the engine at scrape time)
    te_batch_next_size / _tokens inputs / tokens per forward batch
    te_request_in_flight         admitted requests not yet answered (ours)
    te_model_info{...} 1         model id, task, variant, dtype, provider, version, isa_class,
                                 cpu (ours)
    te_model_memory_bytes        resident memory the process gained loading the model and
                                 warming up its engine (ours; tei_ort/serve/memory.py)
    te_model_graph_bytes         the served graph's bytes on disk, external data included (ours)
    process_*                    prometheus-client's process collector: RSS, CPU, fds (ours)

Every te_* series carries a `model` label, the served model name (one server may serve several
models); te_request_* of a request that named no served model (404) or whose body could not be
read before it was routed carry model="" and the default model respectively. process_* are the
whole process's.

Counters are exposed under TEI's names, without the `_total` suffix prometheus-client adds (TEI's
dashboards and autoscalers query `te_request_count`), and without `_created` series (TEI has none).

The registry lives in this process: `tei-serve` runs one process (Sanic's single_process mode, no
workers flag), so every request and every scrape see the same numbers. Several Sanic workers would
each count their own share; they are not supported.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import prometheus_client
import pydantic
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tei_ort import errors
from tei_ort.engine.config import BatchReport, EngineStats
from tei_ort.engine.types import Metadata
from tei_ort.serve.errors import ModelNotFound
from tei_ort.serve.memory import ModelMemory

# _created series double the series count and TEI has none. Process-wide, and this is our process.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# TEI's buckets (router/src/prometheus.rs): every "*duration" histogram, 35 geometric steps from
# 1.5e-5 s by x1.5 (up to ~14.6 s); lengths and batch sizes in powers of two.
DURATION_BUCKETS = tuple(1e-5 * 1.5**k for k in range(1, 36))
BATCH_SIZE_BUCKETS = tuple(2.0**k for k in range(13))
BATCH_TOKENS_BUCKETS = tuple(2.0**k for k in range(21))


def input_length_buckets(max_input_length: int) -> tuple[float, ...]:
    return tuple(2.0**k for k in range(20) if 2**k <= max_input_length)


class Family(enum.Enum):
    """TEI's two per-input families: embed (every embedding route) and predict (predict, rerank)."""

    EMBED = "embed"
    PREDICT = "predict"


# Exception class -> te_request_failure's `err`, looked up along the MRO (subclass rows first).
# TEI's values; `unhealthy` (engine stopped) and `internal` (a bug) are ours.
FAILURE_LABELS: dict[type[BaseException], str] = {
    errors.BatchSizeError: "batch_size",
    errors.ValidationError: "validation",  # EmptyInput and malformed JSON included, as in TEI
    pydantic.ValidationError: "validation",
    errors.TokenizationError: "tokenization",
    errors.Overloaded: "overloaded",
    errors.WrongModelType: "model_type",
    errors.BackendError: "inference",
    errors.Unhealthy: "unhealthy",
    ModelNotFound: "model_not_found",
    asyncio.CancelledError: "dropped",  # the client went away; Sanic cancels its handler
}
INTERNAL = "internal"


def failure_label(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        label = FAILURE_LABELS.get(cls)
        if label is not None:
            return label
    return INTERNAL


def observe_many(histogram: prometheus_client.Histogram, amount: float, times: int) -> None:
    """`times` observations of one value in O(log buckets): a 2,048-input request would otherwise
    cost ~10k observe() calls (~40 ms of event loop). Uses the Histogram's bucket counters as
    observe() does; tests/serve/test_metrics.py checks the result equals repeated observe()."""
    if times <= 0:
        return
    index = bisect.bisect_left(histogram._upper_bounds, amount)
    histogram._sum.inc(amount * times)
    histogram._buckets[index].inc(times)


MODEL = "model"  # the label every te_* series carries: the served model name


@dataclass(frozen=True)
class ModelSeries:
    """One served model as the metrics see it."""

    name: str  # the `model` label
    stats: Callable[[], EngineStats]
    info: Mapping[str, str]  # te_model_info's labels
    max_input_length: int


class _Phases:
    """One family's (or the request level's) duration histograms: total, tokenization, queue,
    inference."""

    def __init__(self, prefix: str, registry: prometheus_client.CollectorRegistry) -> None:
        def histogram(part: str, what: str) -> prometheus_client.Histogram:
            return prometheus_client.Histogram(
                f"{prefix}{part}duration",
                what,
                [MODEL],
                registry=registry,
                buckets=DURATION_BUCKETS,
            )

        self.total = histogram("_", "End-to-end seconds")
        self.tokenization = histogram("_tokenization_", "Tokenization seconds")
        self.queue = histogram("_queue_", "Seconds waiting for a batch")
        self.inference = histogram("_inference_", "Forward-pass seconds")

    def observe(
        self, model: str, total_s: float, metadata: Metadata | None, times: int = 1
    ) -> None:
        parts = [(self.total, total_s)]
        if metadata is not None:
            parts += [
                (self.tokenization, metadata.tokenization_s),
                (self.queue, metadata.queue_s),
                (self.inference, metadata.inference_s),
            ]
        for histogram, seconds in parts:
            observe_many(histogram.labels(model), seconds, times)


class _FamilyMetrics:
    def __init__(self, family: Family, registry: prometheus_client.CollectorRegistry) -> None:
        name = f"te_{family.value}"
        self.count = prometheus_client.Counter(
            f"{name}_count", f"{family.value} inputs received", [MODEL], registry=registry
        )
        self.success = prometheus_client.Counter(
            f"{name}_success", f"{family.value} inputs answered", [MODEL], registry=registry
        )
        self.phases = _Phases(name, registry)


class _EngineCollector(Collector):
    """Gauges read from each model's engine at scrape time, and each model's info series."""

    def __init__(self, models: Sequence[ModelSeries]) -> None:
        self._models = tuple(models)

    def describe(self) -> Iterable[Metric]:
        return []  # the registry need not call the engine at registration

    def collect(self) -> Iterable[Metric]:
        queue = GaugeMetricFamily("te_queue_size", "Inputs waiting for a batch", labels=[MODEL])
        in_flight = GaugeMetricFamily(
            "te_request_in_flight", "Admitted requests not yet answered", labels=[MODEL]
        )
        for model in self._models:
            stats = model.stats()
            queue.add_metric([model.name], stats.queue_size)
            in_flight.add_metric([model.name], stats.in_flight)
        yield from (queue, in_flight)
        # One family, one label set: every model's info series must name the same labels.
        label_names = list(dict.fromkeys(k for m in self._models for k in (MODEL, *m.info)))
        info = GaugeMetricFamily("te_model_info", "A served model (value 1)", labels=label_names)
        for model in self._models:
            values = {**model.info, MODEL: model.name}
            info.add_metric([values.get(name, "") for name in label_names], 1)
        yield info


# prometheus-client names every counter <name>_total; TEI's exporter does not (see the docstring).
_COUNTER_SUFFIX = re.compile(rb"^(# (?:HELP|TYPE) )?(te_\w+?)_total(?=[ {])", re.MULTILINE)


class Metrics:
    def __init__(self, models: Sequence[ModelSeries]) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        registry = self.registry
        self.models = tuple(models)
        self.request_count = prometheus_client.Counter(
            "te_request_count", "Inference requests", ["method", MODEL], registry=registry
        )
        self.request_success = prometheus_client.Counter(
            "te_request_success",
            "Successful inference requests",
            ["method", MODEL],
            registry=registry,
        )
        self.request_failure = prometheus_client.Counter(
            "te_request_failure", "Failed inference requests", ["err", MODEL], registry=registry
        )
        self.request_phases = _Phases("te_request", registry)
        # One histogram has one bucket list: the longest model's.
        longest = max((m.max_input_length for m in self.models), default=1)
        self.input_length = prometheus_client.Histogram(
            "te_request_input_length",
            "Tokens per input",
            [MODEL],
            registry=registry,
            buckets=input_length_buckets(longest),
        )
        self.batch_size = prometheus_client.Histogram(
            "te_batch_next_size",
            "Inputs per batch",
            [MODEL],
            registry=registry,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.batch_tokens = prometheus_client.Histogram(
            "te_batch_next_tokens",
            "Tokens per batch",
            [MODEL],
            registry=registry,
            buckets=BATCH_TOKENS_BUCKETS,
        )
        self.families = {family: _FamilyMetrics(family, registry) for family in Family}
        # Set at start-up, as each model's figures are measured (memory_measured).
        self.model_memory = prometheus_client.Gauge(
            "te_model_memory_bytes",
            "Resident memory the process gained loading the model and warming up its engine",
            [MODEL],
            registry=registry,
        )
        self.model_graph = prometheus_client.Gauge(
            "te_model_graph_bytes", "The served graph's bytes on disk", [MODEL], registry=registry
        )
        registry.register(_EngineCollector(self.models))
        prometheus_client.ProcessCollector(registry=registry)

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)

    def memory_measured(self, model: str, memory: ModelMemory) -> None:
        self.model_memory.labels(model).set(memory.rss_delta_bytes)
        self.model_graph.labels(model).set(memory.graph_bytes)

    # -- per HTTP request ---------------------------------------------------------------------

    def request_started(self, method: str, model: str) -> None:
        self.request_count.labels(method, model).inc()

    def request_succeeded(
        self, method: str, model: str, total_s: float, metadata: Metadata | None
    ) -> None:
        self.request_success.labels(method, model).inc()
        self.request_phases.observe(model, total_s, metadata)

    def request_failed(self, exc: BaseException, model: str) -> None:
        self.request_failure.labels(failure_label(exc), model).inc()

    # -- exposition ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Prometheus text format 0.0.4, counters under TEI's names."""
        return _COUNTER_SUFFIX.sub(rb"\1\2", prometheus_client.generate_latest(self.registry))


@dataclass(frozen=True)
class ModelMetrics:
    """One model's view of the metrics: what its ObservedEngine and batch listener feed."""

    metrics: Metrics
    model: str

    def inputs_received(self, family: Family, inputs: int) -> None:
        self.metrics.families[family].count.labels(self.model).inc(inputs)

    def inputs_answered(
        self, family: Family, inputs: int, total_s: float, metadata: Metadata
    ) -> None:
        family_metrics = self.metrics.families[family]
        family_metrics.success.labels(self.model).inc(inputs)
        # The engine reports a request's mean times (and total tokens): each input is observed
        # with them, so _count and _sum are exact and the buckets are those of the means.
        family_metrics.phases.observe(self.model, total_s, metadata, times=inputs)
        mean_tokens = metadata.compute_tokens / max(inputs, 1)
        observe_many(self.metrics.input_length.labels(self.model), mean_tokens, inputs)

    def batch_done(self, report: BatchReport) -> None:
        """The engine's batch listener: every forward pass, failed ones included."""
        self.metrics.batch_size.labels(self.model).observe(report.size)
        self.metrics.batch_tokens.labels(self.model).observe(report.tokens)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
