"""TEI's gRPC API (tei.v1) over a real loopback socket, from stubs that grpcio-tools generates from
tei.proto at test time, as a TEI client would. Every answer is checked against the HTTP route's
answer on the same server and model (float32 values equal exactly), streams carry thousands of
messages, and errors, auth, health, reflection, metrics and cancellation are each exercised."""

from __future__ import annotations

import hashlib
import importlib
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tei_ort.serve.grpc
from tei_ort import errors
from tei_ort.engine import Engine, EngineConfig
from tei_ort.package import Task
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.engine_api import EngineAPI
from tei_ort.serve.grpc import GrpcListener, attach_grpc
from tei_ort.serve.settings import load_settings
from tei_ort.serve.telemetry import Telemetry, TelemetryOptions
from tests.serve.fakes import FakeEngine, FakeModel
from tests.serve.live import context, serve_app
from tests.serve.scrape import scrape, value
from tests.serve.test_tracing import PARENT_ID, TRACE_ID, Receiver

PROTO_DIR = Path(tei_ort.serve.grpc.__file__).parent
# sha256 of proto/tei.proto in huggingface/text-embeddings-inference at 0d124dc (2026-11): ours is
# that file byte for byte after its two comment lines.
TEI_PROTO_SHA256 = "d621ab87531c09459cea30560d1d6e3f354a0ab63a52aac9336dea7480f5bb2c"
STREAM_LIMIT = 1024  # max_client_batch_size of the stream servers: HTTP answers 1,000 per request
Code = grpc.StatusCode


def generate(out: Path, *, grpc_stubs: bool = True) -> None:
    args = [f"-I{PROTO_DIR}", f"--python_out={out}", str(PROTO_DIR / "tei.proto")]
    if grpc_stubs:
        args.insert(2, f"--grpc_python_out={out}")
    assert protoc.main(["grpc_tools.protoc", *args]) == 0


def load_stubs(out: Path) -> types.SimpleNamespace:
    """The client side, as a TEI user builds it: tei_pb2 and tei_pb2_grpc from tei.proto."""
    generate(out)
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("tei_pb2")
        rpc = importlib.import_module("tei_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return types.SimpleNamespace(pb=pb, rpc=rpc)


@pytest.fixture(scope="session")
def tei(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    return load_stubs(tmp_path_factory.mktemp("tei_stubs"))


@dataclass
class Served:
    http: httpx.Client
    channel: grpc.Channel
    engine: Any
    listener: GrpcListener
    tei: types.SimpleNamespace

    def stub(self, service: str) -> Any:
        return getattr(self.tei.rpc, f"{service}Stub")(self.channel)


@contextmanager
def grpc_server(
    engine: EngineAPI,
    tei: types.SimpleNamespace,
    api_key: str | None = None,
    telemetry: TelemetryOptions | None = None,
) -> Iterator[Served]:
    ctx = context(engine)
    app = create_app(
        ctx,
        payload_limit=1 << 22,
        access=AccessPolicy(api_key, ()),
        telemetry=Telemetry.build(ctx, telemetry) if telemetry else None,
    )
    listener = attach_grpc(app, "127.0.0.1", 0)
    with (
        serve_app(app) as url,
        httpx.Client(base_url=url, timeout=60) as http,
        grpc.insecure_channel(f"127.0.0.1:{listener.port}") as channel,
    ):
        yield Served(http, channel, engine, listener, tei)


def engine_for(task: Task, limit: int = STREAM_LIMIT, **config: Any) -> Engine:
    return Engine(FakeModel(task), EngineConfig(max_client_batch_size=limit, **config))


@pytest.fixture(scope="module")
def embedder(tei: types.SimpleNamespace) -> Iterator[Served]:
    with grpc_server(engine_for(Task.EMBEDDING), tei) as served:
        yield served


@pytest.fixture(scope="module")
def classifier(tei: types.SimpleNamespace) -> Iterator[Served]:
    with grpc_server(engine_for(Task.CLASSIFICATION), tei) as served:
        yield served


@pytest.fixture(scope="module")
def reranker(tei: types.SimpleNamespace) -> Iterator[Served]:
    # 8 texts per request: RerankStream's thousands of texts span many engine calls.
    with grpc_server(engine_for(Task.RERANKER, limit=8), tei) as served:
        yield served


@pytest.fixture(scope="module")
def splade(tei: types.SimpleNamespace) -> Iterator[Served]:
    with grpc_server(engine_for(Task.SPARSE_EMBEDDING), tei) as served:
        yield served


def post(served: Served, path: str, body: dict[str, Any]) -> Any:
    r = served.http.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def f32(values: Any) -> np.ndarray:  # type: ignore[type-arg]
    return np.asarray(values, dtype=np.float32)


def texts(n: int, prefix: str = "text") -> list[str]:
    return [f"{prefix} {i} " + "word " * (i % 9) for i in range(n)]


# -- the contract ----------------------------------------------------------------------------


def test_proto_is_teis_unchanged() -> None:
    body = (PROTO_DIR / "tei.proto").read_bytes().split(b"\n", 2)[2]
    assert hashlib.sha256(body).hexdigest() == TEI_PROTO_SHA256


def test_committed_module_is_generated_from_the_proto(tmp_path: Path) -> None:
    generate(tmp_path, grpc_stubs=False)
    assert (tmp_path / "tei_pb2.py").read_bytes() == (PROTO_DIR / "tei_pb2.py").read_bytes()


def test_reflection_lists_every_service_and_serves_tei_proto(embedder: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(embedder.channel)
    [listed] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in listed.list_services_response.service}
    tei_services = {f"tei.v1.{s}" for s in ("Info", "Embed", "Predict", "Rerank", "Tokenize")}
    assert names == {
        *tei_services,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    [found] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="tei.v1.Embed")])
    )
    from google.protobuf import descriptor_pb2

    [raw] = found.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert file.name == "tei.proto" and file.package == "tei.v1"
    methods = {f"{s.name}/{m.name}" for s in file.service for m in s.method}
    assert len(methods) == 17 and "Rerank/RerankStream" in methods


# -- unary calls equal the HTTP routes -------------------------------------------------------


@pytest.mark.parametrize("served_name", ["embedder", "reranker", "classifier", "splade"])
def test_info_matches_http(served_name: str, request: pytest.FixtureRequest) -> None:
    served: Served = request.getfixturevalue(served_name)
    pb = served.tei.pb
    got = served.stub("Info").Info(pb.InfoRequest())
    want = served.http.get("/info").json()
    for name in (
        "version",
        "model_id",
        "model_dtype",
        "max_concurrent_requests",
        "max_input_length",
        "max_batch_tokens",
        "max_client_batch_size",
        "tokenization_workers",
    ):
        assert getattr(got, name) == want[name], name
    assert not got.HasField("max_batch_requests") and want["max_batch_requests"] is None
    assert not got.HasField("sha") and not got.HasField("model_sha")
    kind = next(iter(want["model_type"]))  # "embedding", "classifier" or "reranker"
    assert pb.ModelType.Name(got.model_type) == f"MODEL_TYPE_{kind.upper()}"


EMBED_OPTIONS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"truncate": False}),
    ({"normalize": False}, {"normalize": False, "truncate": False}),
    ({"dimensions": 4}, {"dimensions": 4, "truncate": False}),
    ({"prompt_name": "query"}, {"prompt_name": "query", "truncate": False}),
    (
        {"truncate": True, "truncation_direction": 1},
        {"truncate": True, "truncation_direction": "left"},
    ),
    ({"truncate": True}, {"truncate": True}),
]


@pytest.mark.parametrize(("fields", "body"), EMBED_OPTIONS)
def test_embed_matches_http(embedder: Served, fields: dict[str, Any], body: dict[str, Any]) -> None:
    pb = embedder.tei.pb
    text = "the quick brown fox jumps over the lazy dog again and again and again"
    if not fields.get("truncate"):
        text = "the quick brown fox"
    got, call = embedder.stub("Embed").Embed.with_call(pb.EmbedRequest(inputs=text, **fields))
    r = embedder.http.post("/embed", json={"inputs": text, **body})
    assert r.status_code == 200
    np.testing.assert_array_equal(f32(got.embeddings), f32(r.json()[0]))
    assert got.metadata.compute_tokens == int(r.headers["x-compute-tokens"])
    assert got.metadata.compute_chars == len(text)
    assert got.metadata.total_time_ns >= got.metadata.inference_time_ns > 0
    headers = dict(call.initial_metadata())
    assert headers["x-compute-tokens"] == r.headers["x-compute-tokens"]
    assert headers["x-compute-type"] == "gpu+optimized"


def test_embed_all_and_sparse_match_http(embedder: Served, splade: Served) -> None:
    pb = embedder.tei.pb
    text = "sparse and dense token vectors"
    got = embedder.stub("Embed").EmbedAll(pb.EmbedAllRequest(inputs=text, prompt_name="passage"))
    want = post(embedder, "/embed_all", {"inputs": text, "prompt_name": "passage"})[0]
    np.testing.assert_array_equal(f32([t.embeddings for t in got.token_embeddings]), f32(want))
    sparse = splade.stub("Embed").EmbedSparse(pb.EmbedSparseRequest(inputs=text))
    want_sparse = post(splade, "/embed_sparse", {"inputs": text})[0]
    assert [(v.index, v.value) for v in sparse.sparse_embeddings] == [
        (v["index"], np.float32(v["value"])) for v in want_sparse
    ]
    assert len(want_sparse) > 3


@pytest.mark.parametrize("raw_scores", [False, True])
def test_predict_and_predict_pair_match_http(classifier: Served, raw_scores: bool) -> None:
    pb = classifier.tei.pb
    stub = classifier.stub("Predict")
    got = stub.Predict(pb.PredictRequest(inputs="I loved it", raw_scores=raw_scores))
    want = post(classifier, "/predict", {"inputs": "I loved it", "raw_scores": raw_scores})
    pair = stub.PredictPair(
        pb.PredictPairRequest(inputs=["first", "second"], raw_scores=raw_scores)
    )
    want_pair = post(
        classifier, "/predict", {"inputs": ["first", "second"], "raw_scores": raw_scores}
    )
    for answer, expected in ((got, want), (pair, want_pair)):
        assert [(p.label, p.score) for p in answer.predictions] == [
            (p["label"], np.float32(p["score"])) for p in expected
        ]
        assert {p.label for p in answer.predictions} == {"negative", "positive", "neutral"}
    scores = [p.score for p in got.predictions]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("return_text", "raw_scores"), [(False, False), (True, True)])
def test_rerank_matches_http(reranker: Served, return_text: bool, raw_scores: bool) -> None:
    pb = reranker.tei.pb
    docs = ["Paris is in France", "bananas", "the capital of France is Paris", "rain"]
    got = reranker.stub("Rerank").Rerank(
        pb.RerankRequest(
            query="capital of France", texts=docs, return_text=return_text, raw_scores=raw_scores
        )
    )
    body = {"query": "capital of France", "texts": docs, "return_text": return_text}
    want = post(reranker, "/rerank", {**body, "raw_scores": raw_scores})
    assert [(r.index, r.score) for r in got.ranks] == [
        (r["index"], np.float32(r["score"])) for r in want
    ]
    assert [r.text if r.HasField("text") else None for r in got.ranks] == [
        r.get("text") for r in want
    ]
    assert got.metadata.compute_tokens > 0


@pytest.mark.parametrize("special", [False, True])
def test_tokenize_and_decode_match_http(embedder: Served, special: bool) -> None:
    pb = embedder.tei.pb
    stub = embedder.stub("Tokenize")
    text = "Héllo, wörld!"
    got = stub.Tokenize(pb.EncodeRequest(inputs=text, add_special_tokens=special))
    want = post(embedder, "/tokenize", {"inputs": text, "add_special_tokens": special})[0]
    assert [
        (
            t.id,
            t.text,
            t.special,
            t.start if t.HasField("start") else None,
            t.stop if t.HasField("stop") else None,
        )
        for t in got.tokens
    ] == [(t["id"], t["text"], t["special"], t["start"], t["stop"]) for t in want]
    assert any(t.special for t in got.tokens) == special
    ids = [t.id for t in got.tokens]
    decoded = stub.Decode(pb.DecodeRequest(ids=ids, skip_special_tokens=not special))
    assert (
        decoded.text
        == post(embedder, "/decode", {"ids": ids, "skip_special_tokens": not special})[0]
    )
    prompted = stub.Tokenize(pb.EncodeRequest(inputs="x", prompt_name="query"))
    assert [t.text for t in prompted.tokens] == ["query", ":", "x"]


# -- streams ---------------------------------------------------------------------------------


def http_embed(served: Served, inputs: list[str], path: str = "/embed", **body: Any) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(inputs), 1000):
        out += post(served, path, {"inputs": inputs[start : start + 1000], **body})
    return out


def http_embed_url(url: str, inputs: list[str]) -> list[Any]:
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/embed", json={"inputs": inputs})
        assert r.status_code == 200
        return list(r.json())


def test_embed_stream_of_thousands_answers_each_in_order(embedder: Served) -> None:
    pb = embedder.tei.pb
    inputs = texts(3000)
    answers = list(
        embedder.stub("Embed").EmbedStream(
            pb.EmbedRequest(inputs=t, truncate=True, normalize=i % 2 == 0)
            for i, t in enumerate(inputs)
        )
    )
    assert len(answers) == 3000
    normalized = http_embed(embedder, inputs[0::2], truncate=True)
    raw = http_embed(embedder, inputs[1::2], truncate=True, normalize=False)
    want = [row for pair in zip(normalized, raw, strict=True) for row in pair]
    np.testing.assert_array_equal(f32([a.embeddings for a in answers]), f32(want))
    assert [a.metadata.compute_chars for a in answers] == [len(t) for t in inputs]


def test_every_other_stream_matches_http(
    embedder: Served, classifier: Served, splade: Served
) -> None:
    pb = embedder.tei.pb
    inputs = texts(400, "stream")
    embed = embedder.stub("Embed")
    all_answers = list(embed.EmbedAllStream(pb.EmbedAllRequest(inputs=t) for t in inputs))
    want_all = http_embed(embedder, inputs, "/embed_all")
    for answer, want in zip(all_answers, want_all, strict=True):
        np.testing.assert_array_equal(
            f32([t.embeddings for t in answer.token_embeddings]), f32(want)
        )

    sparse = list(
        splade.stub("Embed").EmbedSparseStream(pb.EmbedSparseRequest(inputs=t) for t in inputs)
    )
    want_sparse = http_embed(splade, inputs, "/embed_sparse")
    assert [[v.index for v in a.sparse_embeddings] for a in sparse] == [
        [v["index"] for v in w] for w in want_sparse
    ]

    predict = classifier.stub("Predict")
    single = list(predict.PredictStream(pb.PredictRequest(inputs=t) for t in inputs))
    pairs = list(
        predict.PredictPairStream(pb.PredictPairRequest(inputs=[t, "other"]) for t in inputs)
    )
    want_single = post(classifier, "/predict", {"inputs": [[t] for t in inputs]})
    want_pairs = post(classifier, "/predict", {"inputs": [[t, "other"] for t in inputs]})
    for answers, wants in ((single, want_single), (pairs, want_pairs)):
        assert [[(p.label, p.score) for p in a.predictions] for a in answers] == [
            [(p["label"], np.float32(p["score"])) for p in w] for w in wants
        ]

    tokenize = embedder.stub("Tokenize")
    encoded = list(tokenize.TokenizeStream(pb.EncodeRequest(inputs=t) for t in inputs))
    want_tokens = post(embedder, "/tokenize", {"inputs": inputs, "add_special_tokens": False})
    assert [[t.id for t in e.tokens] for e in encoded] == [
        [t["id"] for t in w] for w in want_tokens
    ]
    decoded = list(
        tokenize.DecodeStream(pb.DecodeRequest(ids=[t.id for t in e.tokens]) for e in encoded)
    )
    assert [d.text for d in decoded] == [t.strip() for t in inputs]


def test_rerank_stream_ranks_thousands_of_texts_as_http(reranker: Served) -> None:
    pb = reranker.tei.pb
    docs = texts(2000, "doc")
    # Two queries interleaved in runs: each text is scored against its own message's query.
    queries = ["first query" if (i // 300) % 2 == 0 else "second query" for i in range(2000)]
    got = reranker.stub("Rerank").RerankStream(
        pb.RerankStreamRequest(query=q, text=t, return_text=i == 0, raw_scores=i == 0)
        for i, (q, t) in enumerate(zip(queries, docs, strict=True))
    )
    scores = np.zeros(2000, dtype=np.float32)
    for run in range(0, 2000, 300):
        # The reranker server takes 8 texts per HTTP request.
        for start in range(run, min(run + 300, 2000), 8):
            chunk = slice(start, min(start + 8, run + 300))
            body = {"query": queries[start], "texts": docs[chunk], "raw_scores": True}
            for rank in post(reranker, "/rerank", body):
                scores[start + rank["index"]] = rank["score"]
    order = np.argsort(-scores, kind="stable")
    assert [r.index for r in got.ranks] == order.tolist()
    assert [r.score for r in got.ranks] == scores[order].tolist()
    assert [r.text for r in got.ranks] == [docs[i] for i in order]  # first message's return_text
    assert got.metadata.compute_chars == sum(
        len(q) + len(t) for q, t in zip(queries, docs, strict=True)
    )


def test_a_stream_ends_at_its_first_bad_message(embedder: Served) -> None:
    pb = embedder.tei.pb
    messages = [pb.EmbedRequest(inputs=f"good {i}") for i in range(5)]
    messages += [pb.EmbedRequest(inputs="bad", dimensions=0)]
    messages += [pb.EmbedRequest(inputs=f"after {i}") for i in range(50)]
    received = []
    with pytest.raises(grpc.RpcError) as failure:
        for answer in embedder.stub("Embed").EmbedStream(iter(messages)):
            received.append(answer)
    assert failure.value.code() == Code.INVALID_ARGUMENT
    assert failure.value.details() == "`dimensions` should be positive"
    want = http_embed(embedder, [f"good {i}" for i in range(5)])
    np.testing.assert_array_equal(f32([a.embeddings for a in received]), f32(want))


def test_cancelling_a_stream_mid_way_drops_its_work(tei: types.SimpleNamespace) -> None:
    engine = engine_for(Task.EMBEDDING)
    with grpc_server(engine, tei) as served:
        pb = tei.pb
        sent = 0

        def endless() -> Iterator[Any]:
            nonlocal sent
            while True:
                sent += 1
                yield pb.EmbedRequest(inputs=f"message {sent}")

        call = served.stub("Embed").EmbedStream(endless())
        answers = [next(call) for _ in range(200)]
        assert len(answers) == 200
        call.cancel()
        with pytest.raises(grpc.RpcError) as cancelled:
            next(call)
        assert cancelled.value.code() == Code.CANCELLED
        # The server cancels the stream's outstanding messages: the engine empties (a deadline
        # on a condition, not a sleep that hopes the work is done).
        deadline = time.monotonic() + 30
        while engine.stats().in_flight or engine.stats().queue_size:
            assert time.monotonic() < deadline, engine.stats()
            time.sleep(0.01)
        ok = served.stub("Embed").Embed(pb.EmbedRequest(inputs="still serving"))
        want = post(served, "/embed", {"inputs": "still serving"})[0]
        np.testing.assert_array_equal(f32(ok.embeddings), f32(want))
        assert value(scrape(served.http), "te_request_in_flight") == 0


def test_streams_wait_for_admission_rather_than_overload(tei: types.SimpleNamespace) -> None:
    # Two requests in flight at most; a stream keeps one slot and waits for it, message by message.
    engine = engine_for(Task.EMBEDDING, max_concurrent_requests=2)
    with grpc_server(engine, tei) as served:
        pb = tei.pb
        inputs = texts(500, "admitted")
        answers = list(served.stub("Embed").EmbedStream(pb.EmbedRequest(inputs=t) for t in inputs))
        want = http_embed(served, inputs[:2])
        assert len(answers) == 500
        np.testing.assert_array_equal(f32([a.embeddings for a in answers[:2]]), f32(want))


# -- errors ----------------------------------------------------------------------------------

LONG = "word " * 40  # FakeModel reads at most 16 tokens


ERROR_CASES = [
    # (server, service, method, request fields, code, details)
    ("embedder", "Embed", "Embed", {"inputs": "x", "dimensions": 0}, Code.INVALID_ARGUMENT, "`dimensions` should be positive"),
    ("embedder", "Embed", "Embed", {"inputs": "x", "dimensions": 9}, Code.INVALID_ARGUMENT, "`dimensions` should be at most the model's dimension 8, got 9"),
    ("embedder", "Embed", "Embed", {"inputs": "x", "prompt_name": "nope"}, Code.INVALID_ARGUMENT, "prompt_name 'nope' is not one of this model's prompts"),
    ("embedder", "Embed", "Embed", {"inputs": LONG}, Code.INVALID_ARGUMENT, "Input validation error: `inputs` must have less than 16 tokens"),
    ("embedder", "Embed", "Embed", {"inputs": "x", "truncation_direction": 7}, Code.INVALID_ARGUMENT, "unknown truncation_direction 7"),
    ("embedder", "Embed", "EmbedSparse", {"inputs": "x"}, Code.FAILED_PRECONDITION, "model is not an embedding model with SPLADE pooling"),
    ("embedder", "Predict", "Predict", {"inputs": "x"}, Code.FAILED_PRECONDITION, "model is not a classifier model"),
    ("embedder", "Rerank", "Rerank", {"query": "q", "texts": ["a"]}, Code.FAILED_PRECONDITION, "model is not a re-ranker model"),
    ("embedder", "Tokenize", "Tokenize", {"inputs": "x", "prompt_name": "nope"}, Code.INVALID_ARGUMENT, "prompt_name 'nope' is not one of this model's prompts"),
    ("splade", "Embed", "EmbedAll", {"inputs": "x"}, Code.FAILED_PRECONDITION, "`embed_all` is not available for SPLADE models"),
    ("reranker", "Rerank", "Rerank", {"query": "q", "texts": []}, Code.INVALID_ARGUMENT, "`texts` cannot be empty"),
    ("reranker", "Rerank", "Rerank", {"query": "q", "texts": ["a"] * 9}, Code.INVALID_ARGUMENT, "batch size 9 > maximum allowed batch size 8"),
    ("reranker", "Predict", "PredictPair", {"inputs": ["a", "b", "c"]}, Code.INVALID_ARGUMENT, "`inputs` must have a single or two elements. Given: 3"),
    ("reranker", "Predict", "PredictPair", {"inputs": []}, Code.INVALID_ARGUMENT, "`inputs` must have a single or two elements. Given: 0"),
    ("classifier", "Embed", "Embed", {"inputs": "x"}, Code.FAILED_PRECONDITION, "model is not an embedding model"),
]  # fmt: skip
REQUEST_TYPES = {
    "Embed": "EmbedRequest",
    "EmbedSparse": "EmbedSparseRequest",
    "EmbedAll": "EmbedAllRequest",
    "Predict": "PredictRequest",
    "PredictPair": "PredictPairRequest",
    "Rerank": "RerankRequest",
    "Tokenize": "EncodeRequest",
}


@pytest.mark.parametrize(("server", "service", "method", "fields", "code", "details"), ERROR_CASES)
def test_errors_carry_teis_status_codes(
    server: str,
    service: str,
    method: str,
    fields: dict[str, Any],
    code: grpc.StatusCode,
    details: str,
    request: pytest.FixtureRequest,
) -> None:
    served: Served = request.getfixturevalue(server)
    message = getattr(served.tei.pb, REQUEST_TYPES[method])(**fields)
    with pytest.raises(grpc.RpcError) as failure:
        getattr(served.stub(service), method)(message)
    assert failure.value.code() == code
    assert failure.value.details().startswith(details), failure.value.details()


def test_rerank_stream_errors(reranker: Served, embedder: Served) -> None:
    pb = reranker.tei.pb
    with pytest.raises(grpc.RpcError) as empty:
        reranker.stub("Rerank").RerankStream(iter([]))
    assert empty.value.code() == Code.INVALID_ARGUMENT
    assert empty.value.details() == "`texts` cannot be empty"
    with pytest.raises(grpc.RpcError) as wrong:
        embedder.stub("Rerank").RerankStream(iter([pb.RerankStreamRequest(query="q", text="t")]))
    assert wrong.value.code() == Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("failure", "code", "details"),
    [
        (errors.Overloaded("Model is overloaded"), Code.RESOURCE_EXHAUSTED, "Model is overloaded"),
        (errors.BackendError("forward failed"), Code.FAILED_PRECONDITION, "forward failed"),
        (
            errors.Unhealthy("the engine is not running"),
            Code.UNAVAILABLE,
            "the engine is not running",
        ),
        (errors.TokenizationError("bad input"), Code.FAILED_PRECONDITION, "bad input"),
        (RuntimeError("secret internals"), Code.INTERNAL, "internal server error"),
    ],
)
def test_engine_failures_carry_teis_status_codes(
    tei: types.SimpleNamespace, failure: Exception, code: grpc.StatusCode, details: str
) -> None:
    engine = FakeEngine(FakeModel(Task.EMBEDDING))
    with grpc_server(engine, tei) as served:
        before = scrape(served.http)
        engine.fail_next = failure
        with pytest.raises(grpc.RpcError) as raised:
            served.stub("Embed").Embed(tei.pb.EmbedRequest(inputs="x"))
        assert (raised.value.code(), raised.value.details()) == (code, details)
        engine.fail_next = failure
        with pytest.raises(grpc.RpcError) as in_stream:
            list(served.stub("Embed").EmbedStream(iter([tei.pb.EmbedRequest(inputs="x")])))
        assert (in_stream.value.code(), in_stream.value.details()) == (code, details)
        after = scrape(served.http)
        failed = sum(v for (name, _), v in after.items() if name == "te_request_failure")
        failed -= sum(v for (name, _), v in before.items() if name == "te_request_failure")
        assert failed == 2


def test_garbage_and_unknown_methods_do_not_hurt_the_server(embedder: Served) -> None:
    raw = embedder.channel.unary_unary("/tei.v1.Embed/Embed")
    with pytest.raises(grpc.RpcError) as garbage:
        raw(b"\xff\xff\xff\xff")
    assert garbage.value.code() == Code.INTERNAL  # tonic's (TEI's) answer to one
    assert garbage.value.details().startswith("failed to decode Protobuf message")
    stream = embedder.channel.stream_stream("/tei.v1.Embed/EmbedStream")
    pb = embedder.tei.pb
    valid = pb.EmbedRequest(inputs="fine").SerializeToString()
    with pytest.raises(grpc.RpcError) as garbage_in_stream:
        list(stream(iter([valid, b"\xff\xff\xff\xff", valid])))
    assert garbage_in_stream.value.code() == Code.INTERNAL
    assert garbage_in_stream.value.details().startswith("failed to decode Protobuf message")
    with pytest.raises(grpc.RpcError) as unknown:
        embedder.channel.unary_unary("/tei.v1.Embed/Nope")(b"")
    assert unknown.value.code() == Code.UNIMPLEMENTED
    answer = embedder.stub("Embed").Embed(pb.EmbedRequest(inputs="after garbage"))
    want = post(embedder, "/embed", {"inputs": "after garbage"})[0]
    np.testing.assert_array_equal(f32(answer.embeddings), f32(want))


# HTTP status -> the gRPC code TEI gives the same error.
HTTP_TO_GRPC = {
    400: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    424: Code.FAILED_PRECONDITION,
    429: Code.RESOURCE_EXHAUSTED,
    503: Code.UNAVAILABLE,
}
DIRECTION_NAMES = {0: "right", 1: "left", 2: "up"}  # 2: no such direction


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=120),
    truncate=st.booleans(),
    normalize=st.none() | st.booleans(),
    dimensions=st.none() | st.integers(0, 12),
    prompt_name=st.none() | st.sampled_from(["query", "passage", "nope"]),
    direction=st.sampled_from([0, 1, 2]),
)
def test_random_embed_requests_answer_as_http_does(
    embedder: Served,
    text: str,
    truncate: bool,
    normalize: bool | None,
    dimensions: int | None,
    prompt_name: str | None,
    direction: int,
) -> None:
    """Whatever the fields, gRPC answers what HTTP answers: the same vector, or TEI's code for
    HTTP's status, with the same message."""
    optional = {"normalize": normalize, "dimensions": dimensions, "prompt_name": prompt_name}
    fields = {k: v for k, v in optional.items() if v is not None}
    body = {
        "inputs": text,
        "truncate": truncate,
        "truncation_direction": DIRECTION_NAMES[direction],
    }
    r = embedder.http.post("/embed", json={**body, **fields})
    message = embedder.tei.pb.EmbedRequest(
        inputs=text, truncate=truncate, truncation_direction=direction, **fields
    )
    try:
        got = embedder.stub("Embed").Embed(message)
    except grpc.RpcError as failure:
        assert r.status_code != 200, failure.details()
        assert failure.code() == HTTP_TO_GRPC[r.status_code], (r.json(), failure.details())
        if direction != 2:  # pydantic words HTTP's enum error; ours names the field
            assert failure.details() == r.json()["error"]
    else:
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(f32(got.embeddings), f32(r.json()[0]))


def test_random_bytes_never_crash_any_method(embedder: Served, reranker: Served) -> None:
    rng = np.random.default_rng(13)
    for served in (embedder, reranker):
        for service in served.tei.pb.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                for _ in range(8):
                    payloads = [rng.bytes(int(rng.integers(0, 64))) for _ in range(3)]
                    if method.client_streaming:
                        call = (
                            served.channel.stream_stream(path)
                            if method.server_streaming
                            else served.channel.stream_unary(path)
                        )
                        request: Any = iter(payloads)
                    else:
                        call, request = served.channel.unary_unary(path), payloads[0]
                    try:
                        answer = call(request)
                        if method.server_streaming:
                            list(answer)
                    except grpc.RpcError as failure:
                        code, details = failure.code(), failure.details()
                        decode = details.startswith("failed to decode Protobuf message")
                        assert code in HTTP_TO_GRPC.values() or (
                            code == Code.INTERNAL and decode
                        ), (path, code, details)
        assert statuses(served)[""] == SERVING
    answer = embedder.stub("Embed").Embed(embedder.tei.pb.EmbedRequest(inputs="still fine"))
    np.testing.assert_array_equal(
        f32(answer.embeddings), f32(post(embedder, "/embed", {"inputs": "still fine"})[0])
    )


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


def statuses(served: Served) -> dict[str, int]:
    health = health_pb2_grpc.HealthStub(served.channel)
    names = (
        "",
        "tei.v1.Info",
        "tei.v1.Tokenize",
        "tei.v1.Embed",
        "tei.v1.Predict",
        "tei.v1.Rerank",
    )
    return {n: health.Check(health_pb2.HealthCheckRequest(service=n)).status for n in names}


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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


def test_shutdown_lets_calls_in_flight_finish(tei: types.SimpleNamespace) -> None:
    """A stream that is running when the server stops is answered to its end; the engine stops
    only after it."""
    inputs = texts(300, "draining")
    release = threading.Event()

    def held() -> Iterator[Any]:
        yield tei.pb.EmbedRequest(inputs=inputs[0])
        release.wait(60)
        for text in inputs[1:]:
            yield tei.pb.EmbedRequest(inputs=text)

    app = create_app(
        context(engine_for(Task.EMBEDDING)), payload_limit=1 << 22, access=AccessPolicy(None, ())
    )
    listener = attach_grpc(app, "127.0.0.1", 0)
    with ExitStack() as outer:
        server = outer.enter_context(ExitStack())  # the app alone: the client outlives it
        url = server.enter_context(serve_app(app))
        want = http_embed_url(url, inputs)
        channel = outer.enter_context(grpc.insecure_channel(f"127.0.0.1:{listener.port}"))
        call = tei.rpc.EmbedStub(channel).EmbedStream(held())
        answers = [next(call)]  # the stream is in flight
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == SERVING
        closer = threading.Thread(target=server.close)  # stops the app, as SIGTERM does
        closer.start()
        assert next(watch).status == NOT_SERVING  # shutdown has begun
        watch.cancel()
        release.set()
        answers += list(call)
        closer.join(60)
        assert not closer.is_alive()
    np.testing.assert_array_equal(f32([a.embeddings for a in answers]), f32(want))


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


def test_grpc_port_setting() -> None:
    assert load_settings([], {}).grpc_port is None
    assert load_settings(["--grpc-port", "50051"], {}).grpc_port == 50051
    assert load_settings([], {"GRPC_PORT": "50052"}).grpc_port == 50052
    with pytest.raises(ValueError, match="grpc_port"):
        load_settings(["--grpc-port", "0"], {})
