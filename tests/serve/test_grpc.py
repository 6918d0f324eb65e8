"""TEI's gRPC API (tei.v1) over a real loopback socket, from stubs that grpcio-tools generates from
tei.proto at test time, as a TEI client would: the contract (TEI's proto, byte for byte; the
committed module generated from it; reflection), every unary method's answer equal to the HTTP
route's on the same server and model (float32 values exactly), and --grpc-port.

Also the harness the other test_grpc_*.py modules use (streams, errors, ops)."""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
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

import tei_ort.serve.grpc
from tei_ort.engine import Engine, EngineConfig
from tei_ort.package import Task
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.engine_api import EngineAPI
from tei_ort.serve.grpc import GrpcListener, attach_grpc
from tei_ort.serve.grpc.server import listen_address
from tei_ort.serve.settings import load_settings
from tei_ort.serve.telemetry import Telemetry, TelemetryOptions
from tests.serve.fakes import FakeModel
from tests.serve.live import context, serve_app

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


def stubs_fixture() -> Any:
    """A `tei` fixture for a test module: the client side, generated once per session."""

    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
        return load_stubs(tmp_path_factory.mktemp("tei_stubs"))

    return fixture


def server_fixture(task: Task, limit: int = STREAM_LIMIT) -> Any:
    """A module-scoped server fixture: a real engine over FakeModel, HTTP and gRPC on loopback."""

    @pytest.fixture(scope="module")
    def fixture(tei: types.SimpleNamespace) -> Iterator[Served]:
        with grpc_server(engine_for(task, limit), tei) as served:
            yield served

    return fixture


tei = stubs_fixture()
embedder = server_fixture(Task.EMBEDDING)
classifier = server_fixture(Task.CLASSIFICATION)
# 8 texts per request: RerankStream's thousands of texts span many engine calls.
reranker = server_fixture(Task.RERANKER, limit=8)
splade = server_fixture(Task.SPARSE_EMBEDDING)


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


# HTTP status -> the gRPC code TEI gives the same error.
HTTP_TO_GRPC = {
    400: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    424: Code.FAILED_PRECONDITION,
    429: Code.RESOURCE_EXHAUSTED,
    503: Code.UNAVAILABLE,
}


def test_grpc_port_setting() -> None:
    assert load_settings([], {}).grpc_port is None
    assert load_settings(["--grpc-port", "50051"], {}).grpc_port == 50051
    assert load_settings([], {"GRPC_PORT": "50052"}).grpc_port == 50052
    with pytest.raises(ValueError, match="grpc_port"):
        load_settings(["--grpc-port", "0"], {})


def test_listen_address_brackets_ipv6() -> None:
    assert listen_address("0.0.0.0", 50051) == "0.0.0.0:50051"
    assert listen_address("::", 50051) == "[::]:50051"
