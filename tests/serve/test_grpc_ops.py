"""tei.v1 in operation: metrics and traces count gRPC calls, the API key as `authorization`
metadata, health checking per service, and a taken --grpc-port failing the start."""

from __future__ import annotations

import socket
import threading
import time
import types
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tei_ort.engine import Engine, EngineConfig
from tei_ort.package import Task
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.grpc import attach_grpc
from tei_ort.serve.telemetry import TelemetryOptions
from tests.serve.fakes import FakeEngine, FakeModel
from tests.serve.live import context, serve_app
from tests.serve.scrape import scrape, value
from tests.serve.test_grpc import (
    NOT_SERVING,
    SERVING,
    Code,
    Served,
    engine_for,
    f32,
    grpc_server,
    server_fixture,
    statuses,
    stubs_fixture,
)
from tests.serve.test_tracing import PARENT_ID, TRACE_ID, Receiver

tei = stubs_fixture()
embedder = server_fixture(Task.EMBEDDING)
reranker = server_fixture(Task.RERANKER, limit=8)


# -- metrics, auth, health, lifecycle, settings ----------------------------------------------


def test_metrics_count_grpc_requests(embedder: Served) -> None:
    pb = embedder.tei.pb
    before = scrape(embedder.http)
    embed = embedder.stub("Embed")
    embed.Embed(pb.EmbedRequest(inputs="one"))
    list(embed.EmbedStream(pb.EmbedRequest(inputs=f"m {i}") for i in range(10)))
    embedder.stub("Tokenize").Tokenize(pb.EncodeRequest(inputs="not counted"))
    with pytest.raises(grpc.RpcError):
        embed.Embed(pb.EmbedRequest(inputs="x", dimensions=0))
    after = scrape(embedder.http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("te_request_count", method="single") == 12
    assert moved("te_request_success", method="single") == 11
    assert moved("te_request_failure", err="validation") == 1
    assert moved("te_embed_count") == 12  # inputs received, the refused one included
    assert moved("te_embed_success") == 11
    assert moved("te_request_duration_count") == 11


def test_rerank_calls_count_as_batches(reranker: Served) -> None:
    pb = reranker.tei.pb
    before = scrape(reranker.http)
    reranker.stub("Rerank").Rerank(pb.RerankRequest(query="q", texts=["a", "b"]))
    stream = (pb.RerankStreamRequest(query="q", text=t) for t in ("a", "b", "c"))
    reranker.stub("Rerank").RerankStream(stream)
    after = scrape(reranker.http)
    moved = value(after, "te_request_count", method="batch")
    moved -= value(before, "te_request_count", method="batch")
    assert moved == 2
    assert value(after, "te_predict_count") - value(before, "te_predict_count") == 5


class GatedModel(FakeModel):
    """Forwards wait for `gate` after the warm-up: a request holds its slot until the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.forwards = 0

    def forward(self, encodings: Any) -> Any:
        self.forwards += 1
        if self.forwards > 1:
            assert self.gate.wait(60)
        return super().forward(encodings)


def test_http_and_grpc_share_one_admission(tei: types.SimpleNamespace) -> None:
    """One request in flight at most: while HTTP holds the slot, a gRPC call is refused."""
    model = GatedModel()
    engine = Engine(model, EngineConfig(max_concurrent_requests=1))
    with grpc_server(engine, tei) as served:
        answered: list[int] = []
        holder = threading.Thread(
            target=lambda: answered.append(
                served.http.post("/embed", json={"inputs": "hold"}).status_code
            )
        )
        holder.start()
        deadline = time.monotonic() + 30
        while engine.stats().in_flight == 0:  # a condition with a deadline, not a guessed sleep
            assert time.monotonic() < deadline
            time.sleep(0.005)
        with pytest.raises(grpc.RpcError) as refused:
            served.stub("Embed").Embed(tei.pb.EmbedRequest(inputs="x"))
        model.gate.set()
        holder.join(60)
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        assert refused.value.details() == "Model is overloaded"
        assert answered == [200]


def test_grpc_calls_are_traced(tei: types.SimpleNamespace) -> None:
    receiver = Receiver()
    options = TelemetryOptions(otlp_endpoint=receiver.url, otlp_service_name="tei-grpc")
    try:
        with grpc_server(engine_for(Task.EMBEDDING), tei, telemetry=options) as served:
            parent = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
            embed = served.stub("Embed")
            got = embed.Embed(tei.pb.EmbedRequest(inputs="a b c"), metadata=parent)
            list(embed.EmbedStream(tei.pb.EmbedRequest(inputs=t) for t in ("d", "e f")))
            with pytest.raises(grpc.RpcError):
                embed.Embed(tei.pb.EmbedRequest(inputs="x", dimensions=0))
    finally:
        receiver.server.shutdown()
    # Stopping the server flushed the exporter.
    unary = [s for s in receiver.spans if s.name == "tei.v1.Embed/Embed"]
    assert len(unary) == 2
    ok = next(s for s in unary if s.trace_id == TRACE_ID)
    assert ok.parent_id == PARENT_ID  # the caller's traceparent, sent as metadata
    assert ok.attributes["compute_tokens"] == got.metadata.compute_tokens
    children = {s.name for s in receiver.spans if s.parent_id == ok.span_id}
    assert children == {"tokenization", "queue", "inference"}
    failed = next(s for s in unary if s is not ok)
    assert failed.status_code == 2  # STATUS_CODE_ERROR
    assert len([s for s in receiver.spans if s.name == "tei.v1.Embed/EmbedStream"]) == 2


def test_api_key_as_authorization_metadata(tei: types.SimpleNamespace) -> None:
    pb = tei.pb
    with grpc_server(engine_for(Task.EMBEDDING), tei, api_key="s3cret") as served:
        embed = served.stub("Embed")
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cre"),)):
            with pytest.raises(grpc.RpcError) as denied:
                embed.Embed(pb.EmbedRequest(inputs="x"), metadata=metadata)
            assert denied.value.code() == Code.UNAUTHENTICATED
            assert denied.value.details() == "No valid auth token"
        with pytest.raises(grpc.RpcError) as stream_denied:
            list(embed.EmbedStream(iter([pb.EmbedRequest(inputs="x")])))
        assert stream_denied.value.code() == Code.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info_denied:
            served.stub("Info").Info(pb.InfoRequest())
        assert info_denied.value.code() == Code.UNAUTHENTICATED
        want = served.http.post(
            "/embed", json={"inputs": "x"}, headers={"authorization": "Bearer s3cret"}
        ).json()[0]
        for key in ("Bearer s3cret", "s3cret"):  # TEI's form, and the bare key HTTP accepts too
            answer = embed.Embed(pb.EmbedRequest(inputs="x"), metadata=(("authorization", key),))
            np.testing.assert_array_equal(f32(answer.embeddings), f32(want))
        streamed = list(
            embed.EmbedStream(
                iter([pb.EmbedRequest(inputs="x")]), metadata=(("authorization", "Bearer s3cret"),)
            )
        )
        np.testing.assert_array_equal(f32(streamed[0].embeddings), f32(want))
        # Probes and discovery stay open, as in TEI.
        health = health_pb2_grpc.HealthStub(served.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="tei.v1.Embed")).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_health_per_service_as_tei(embedder: Served, reranker: Served) -> None:
    always = {"": SERVING, "tei.v1.Info": SERVING, "tei.v1.Tokenize": SERVING}
    assert statuses(embedder) == {
        **always,
        "tei.v1.Embed": SERVING,
        "tei.v1.Predict": NOT_SERVING,
        "tei.v1.Rerank": NOT_SERVING,
    }
    assert statuses(reranker) == {
        **always,
        "tei.v1.Embed": NOT_SERVING,
        "tei.v1.Predict": SERVING,
        "tei.v1.Rerank": SERVING,
    }
    with pytest.raises(grpc.RpcError) as unknown:
        health_pb2_grpc.HealthStub(embedder.channel).Check(
            health_pb2.HealthCheckRequest(service="tei.v1.Nope")
        )
    assert unknown.value.code() == Code.NOT_FOUND


def test_health_follows_the_engine(tei: types.SimpleNamespace) -> None:
    engine = FakeEngine(FakeModel(Task.EMBEDDING))
    with grpc_server(engine, tei) as served:
        health = health_pb2_grpc.HealthStub(served.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="tei.v1.Embed"))
        assert next(watch).status == SERVING
        engine.healthy = False
        # A batch ran (the engine reports each one): watchers learn the engine's new health.
        served.stub("Embed").Embed(tei.pb.EmbedRequest(inputs="x"))
        assert next(watch).status == NOT_SERVING
        assert statuses(served)["tei.v1.Embed"] == NOT_SERVING
        assert served.http.get("/health").status_code == 503
        engine.healthy = True
        # Check asks the engine, as GET /health does: recovery shows without another batch.
        assert statuses(served)["tei.v1.Embed"] == SERVING
        assert next(watch).status == SERVING
        watch.cancel()
        port = served.listener.port
    # Stopped with the app: the port refuses calls.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as gone:
            tei.rpc.InfoStub(channel).Info(tei.pb.InfoRequest(), timeout=5)
        assert gone.value.code() == Code.UNAVAILABLE


def test_a_taken_grpc_port_fails_the_start(tei: types.SimpleNamespace) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(
            context(engine_for(Task.EMBEDDING)),
            payload_limit=1 << 20,
            access=AccessPolicy(None, ()),
        )
        attach_grpc(app, "127.0.0.1", port)
        refused = pytest.raises(RuntimeError, match=f"cannot listen for gRPC on 127.0.0.1:{port}")
        with refused, serve_app(app):
            pass
