"""/metrics and --prometheus-port: TEI's names and labels, values that move as requests are
served (counts, failure labels, histogram counts and sums), and our additions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import prometheus_client
import pytest

from tei_ort import errors
from tei_ort.package import Task
from tei_ort.runtime.cpu import this_cpu
from tei_ort.serve import metrics
from tei_ort.serve.telemetry import Telemetry, TelemetryOptions
from tests.serve.conftest import MAX_CLIENT_BATCH_SIZE, real_engine
from tests.serve.fakes import FakeModel
from tests.serve.live import context, free_port, serve
from tests.serve.scrape import scrape, value

LONG = " ".join(f"word{i}" for i in range(40))  # > 16 tokens, the fake model's limit


@pytest.fixture()
def server(fake_models: dict[Task, FakeModel]) -> Iterator[httpx.Client]:
    ctx = context(
        real_engine(fake_models[Task.EMBEDDING]),
        provider="cpu",
        variant="fp32",
        cpu=this_cpu().describe(),
        isa_class=this_cpu().isa_class.value,
    )
    with serve(ctx) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def test_counts_and_histograms_move(server: httpx.Client) -> None:
    before = scrape(server)
    tokens = 0
    for path, body in (
        ("/embed", {"inputs": "a"}),
        ("/embed", {"inputs": ["a", "b c", "d e f"]}),
        ("/v1/embeddings", {"input": ["x", "y"]}),
    ):
        r = server.post(path, json=body)
        assert r.status_code == 200
        tokens += int(r.headers["x-compute-tokens"])
    assert server.post("/tokenize", json={"inputs": "a"}).status_code == 200  # not counted
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("te_request_count", method="single") == 1
    assert moved("te_request_count", method="batch") == 2
    assert moved("te_request_success", method="single") == 1
    assert moved("te_request_success", method="batch") == 2
    for part in ("", "_tokenization", "_queue", "_inference"):
        assert moved(f"te_request{part}_duration_count") == 3
        assert moved(f"te_embed{part}_duration_count") == 6  # per input, as TEI's core counts
    assert moved("te_request_duration_sum") > 0
    assert moved("te_embed_count") == moved("te_embed_success") == 6
    assert moved("te_request_input_length_count") == 6
    assert moved("te_request_input_length_sum") == pytest.approx(tokens)
    assert 1 <= moved("te_batch_next_size_count") <= 3
    assert moved("te_batch_next_tokens_sum") > 0
    assert value(after, "te_queue_size") == 0
    assert value(after, "te_request_in_flight") == 0
    assert value(after, "process_resident_memory_bytes") > 10e6
    info = [labels for (name, labels) in after if name == "te_model_info"]
    assert len(info) == 1 and dict(info[0])["model_id"] == "fake/model"
    assert dict(info[0])["task"] == "embedding"
    assert {k: dict(info[0])[k] for k in ("provider", "variant", "isa_class", "cpu")} == {
        "provider": "cpu",
        "variant": "fp32",
        "isa_class": this_cpu().isa_class.value,
        "cpu": this_cpu().describe(),
    }


def test_tei_names_without_total_or_created(server: httpx.Client) -> None:
    server.post("/embed", json={"inputs": "a"})
    text = server.get("/metrics").text
    assert "# TYPE te_request_count counter" in text
    assert "te_request_count_total" not in text and "_created" not in text
    assert "# TYPE te_request_duration histogram" in text
    # TEI's buckets: 35 geometric steps from 1.5e-5 s; powers of two up to max_input_length.
    assert text.count("te_request_duration_bucket{") == 36  # + the +Inf bucket
    assert 'te_request_input_length_bucket{le="16.0",model="fake-model"}' in text
    assert 'te_request_input_length_bucket{le="32.0",model="fake-model"}' not in text


def test_failure_labels(server: httpx.Client) -> None:
    before = scrape(server)
    cases = [
        ({"inputs": ["x"] * (MAX_CLIENT_BATCH_SIZE + 1)}, 422, "batch_size"),
        ({"inputs": LONG, "truncate": False}, 422, "validation"),
        ({"inputs": []}, 400, "validation"),  # TEI counts an empty request as validation
        ({"inputs": 3}, 422, "validation"),
    ]
    for body, status, _ in cases:
        assert server.post("/embed", json=body).status_code == status
    assert server.post("/predict", json={"inputs": "a"}).status_code == 424
    assert server.post("/embed", content=b"{not json").status_code == 400
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("te_request_failure", err="batch_size") == 1
    assert moved("te_request_failure", err="validation") == 4
    assert moved("te_request_failure", err="model_type") == 1
    assert sum(moved("te_request_count", method=m) for m in ("single", "batch")) == 6
    assert moved("te_request_duration_count") == 0  # durations are of successful requests


@pytest.mark.parametrize(
    ("failure", "status", "label"),
    [
        (errors.Overloaded("Model is overloaded"), 429, "overloaded"),
        (errors.BackendError("forward pass failed"), 424, "inference"),
        (errors.TokenizationError("bad"), 422, "tokenization"),
        (errors.BatchSizeError("batch size 9 > maximum allowed batch size 8"), 422, "batch_size"),
        (RuntimeError("bug"), 500, "internal"),
    ],
)
def test_engine_failure_labels(fake_engine_server, failure, status, label) -> None:
    client, engine = fake_engine_server
    engine.fail_next = failure
    assert client.post("/embed", json={"inputs": "a"}).status_code == status
    samples = scrape(client)
    assert value(samples, "te_request_failure", err=label) == 1
    assert value(samples, "te_request_count", method="single") == 1
    assert value(samples, "te_embed_count") == 1 and value(samples, "te_embed_success") == 0


def test_predict_family(fake_models: dict[Task, FakeModel]) -> None:
    engine = real_engine(fake_models[Task.CLASSIFICATION])  # the real engine's counts
    with serve(context(engine)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/predict", json={"inputs": ["a", "b"]}).status_code == 200  # a pair
        assert client.post("/predict", json={"inputs": [["a"], ["b"], ["c"]]}).status_code == 200
        samples = scrape(client)
    assert value(samples, "te_request_count", method="single") == 1
    assert value(samples, "te_request_count", method="batch") == 1
    assert value(samples, "te_predict_count") == value(samples, "te_predict_success") == 4
    assert value(samples, "te_predict_inference_duration_count") == 4
    assert value(samples, "te_embed_count") == 0


def test_separate_prometheus_listener(fake_models: dict[Task, FakeModel]) -> None:
    ctx = context(real_engine(fake_models[Task.EMBEDDING]))
    port = free_port()
    telemetry = Telemetry.build(ctx, TelemetryOptions(prometheus_port=port))
    with serve(ctx, telemetry=telemetry) as url, httpx.Client(base_url=url) as client:
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as side:
            samples = scrape(side)
            assert value(samples, "te_request_success", method="single") == 1
            assert "te_request_count_total" not in side.get("/anything").text
    with pytest.raises(httpx.TransportError):  # closed with the server
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_failure_label_table() -> None:
    assert metrics.failure_label(asyncio.CancelledError()) == "dropped"
    assert metrics.failure_label(errors.EmptyInput("x")) == "validation"
    assert metrics.failure_label(errors.BatchSizeError("batch size 3 > max 2")) == "batch_size"
    assert metrics.failure_label(errors.ValidationError("bad dimensions")) == "validation"
    assert metrics.failure_label(errors.Unhealthy("x")) == "unhealthy"
    assert metrics.input_length_buckets(512)[-1] == 512
    assert (
        metrics.DURATION_BUCKETS[0] == pytest.approx(1.5e-5) and len(metrics.DURATION_BUCKETS) == 35
    )


def test_observe_many_equals_repeated_observe() -> None:
    registry = prometheus_client.CollectorRegistry()
    one = prometheus_client.Histogram("one", "x", registry=registry, buckets=(1, 2, 4))
    many = prometheus_client.Histogram("many", "x", registry=registry, buckets=(1, 2, 4))
    for amount, times in ((0.5, 3), (2.0, 2), (3.0, 1), (9.0, 4)):
        for _ in range(times):
            one.observe(amount)
        metrics.observe_many(many, amount, times)

    def samples(histogram: prometheus_client.Histogram, name: str) -> dict[object, float]:
        return {
            (s.name.replace(name, ""), tuple(s.labels.items())): s.value
            for s in histogram.collect()[0].samples
        }

    assert samples(many, "many") == samples(one, "one")
