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
    process_*                    prometheus-client's process collector: RSS, CPU, fds (ours)

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
from collections.abc import Callable, Iterable, Mapping

import prometheus_client
import pydantic
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tei_ort import errors
from tei_ort.engine.config import BatchReport, EngineStats
from tei_ort.engine.types import Metadata

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


class _Phases:
    """One family's (or the request level's) duration histograms: total, tokenization, queue,
    inference."""

    def __init__(self, prefix: str, registry: prometheus_client.CollectorRegistry) -> None:
        def histogram(part: str, what: str) -> prometheus_client.Histogram:
            return prometheus_client.Histogram(
                f"{prefix}{part}duration", what, registry=registry, buckets=DURATION_BUCKETS
            )

        self.total = histogram("_", "End-to-end seconds")
        self.tokenization = histogram("_tokenization_", "Tokenization seconds")
        self.queue = histogram("_queue_", "Seconds waiting for a batch")
        self.inference = histogram("_inference_", "Forward-pass seconds")

    def observe(self, total_s: float, metadata: Metadata | None, times: int = 1) -> None:
        parts = [(self.total, total_s)]
        if metadata is not None:
            parts += [
                (self.tokenization, metadata.tokenization_s),
                (self.queue, metadata.queue_s),
                (self.inference, metadata.inference_s),
            ]
        for histogram, seconds in parts:
            observe_many(histogram, seconds, times)


class _FamilyMetrics:
    def __init__(self, family: Family, registry: prometheus_client.CollectorRegistry) -> None:
        name = f"te_{family.value}"
        self.count = prometheus_client.Counter(
            f"{name}_count", f"{family.value} inputs received", registry=registry
        )
        self.success = prometheus_client.Counter(
            f"{name}_success", f"{family.value} inputs answered", registry=registry
        )
        self.phases = _Phases(name, registry)


class _EngineCollector(Collector):
    """Gauges read from the engine at scrape time, and the model's info series."""

    def __init__(self, stats: Callable[[], EngineStats], info: Mapping[str, str]) -> None:
        self._stats = stats
        self._info = dict(info)

    def describe(self) -> Iterable[Metric]:
        return []  # the registry need not call the engine at registration

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        yield GaugeMetricFamily(
            "te_queue_size", "Inputs waiting for a batch", value=stats.queue_size
        )
        yield GaugeMetricFamily(
            "te_request_in_flight", "Admitted requests not yet answered", value=stats.in_flight
        )
        info = GaugeMetricFamily(
            "te_model_info", "The served model (value 1)", labels=list(self._info)
        )
        info.add_metric(list(self._info.values()), 1)
        yield info


# prometheus-client names every counter <name>_total; TEI's exporter does not (see the docstring).
_COUNTER_SUFFIX = re.compile(rb"^(# (?:HELP|TYPE) )?(te_\w+?)_total(?=[ {])", re.MULTILINE)


class Metrics:
    def __init__(
        self,
        stats: Callable[[], EngineStats],
        info: Mapping[str, str],
        max_input_length: int,
    ) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        registry = self.registry
        self.request_count = prometheus_client.Counter(
            "te_request_count", "Inference requests", ["method"], registry=registry
        )
        self.request_success = prometheus_client.Counter(
            "te_request_success", "Successful inference requests", ["method"], registry=registry
        )
        self.request_failure = prometheus_client.Counter(
            "te_request_failure", "Failed inference requests", ["err"], registry=registry
        )
        self.request_phases = _Phases("te_request", registry)
        self.input_length = prometheus_client.Histogram(
            "te_request_input_length",
            "Tokens per input",
            registry=registry,
            buckets=input_length_buckets(max_input_length),
        )
        self.batch_size = prometheus_client.Histogram(
            "te_batch_next_size", "Inputs per batch", registry=registry, buckets=BATCH_SIZE_BUCKETS
        )
        self.batch_tokens = prometheus_client.Histogram(
            "te_batch_next_tokens",
            "Tokens per batch",
            registry=registry,
            buckets=BATCH_TOKENS_BUCKETS,
        )
        self.families = {family: _FamilyMetrics(family, registry) for family in Family}
        registry.register(_EngineCollector(stats, info))
        prometheus_client.ProcessCollector(registry=registry)

    # -- per HTTP request ---------------------------------------------------------------------

    def request_started(self, method: str) -> None:
        self.request_count.labels(method).inc()

    def request_succeeded(self, method: str, total_s: float, metadata: Metadata | None) -> None:
        self.request_success.labels(method).inc()
        self.request_phases.observe(total_s, metadata)

    def request_failed(self, exc: BaseException) -> None:
        self.request_failure.labels(failure_label(exc)).inc()

    # -- per engine call ----------------------------------------------------------------------

    def inputs_received(self, family: Family, inputs: int) -> None:
        self.families[family].count.inc(inputs)

    def inputs_answered(
        self, family: Family, inputs: int, total_s: float, metadata: Metadata
    ) -> None:
        metrics = self.families[family]
        metrics.success.inc(inputs)
        # The engine reports a request's mean times (and total tokens): each input is observed
        # with them, so _count and _sum are exact and the buckets are those of the means.
        metrics.phases.observe(total_s, metadata, times=inputs)
        observe_many(self.input_length, metadata.compute_tokens / max(inputs, 1), inputs)

    def batch_done(self, report: BatchReport) -> None:
        """The engine's batch listener: every forward pass, failed ones included."""
        self.batch_size.observe(report.size)
        self.batch_tokens.observe(report.tokens)

    # -- exposition ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Prometheus text format 0.0.4, counters under TEI's names."""
        return _COUNTER_SUFFIX.sub(rb"\1\2", prometheus_client.generate_latest(self.registry))


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
