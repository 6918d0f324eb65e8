"""tei.v1 errors: TEI's status code and HTTP's message for each, engine failures, random requests
(answered as HTTP answers them) and random bytes to every method (never a crash)."""

from __future__ import annotations

import types
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tei_ort import errors
from tei_ort.package import Task
from tests.serve.fakes import FakeEngine, FakeModel
from tests.serve.scrape import scrape
from tests.serve.test_grpc import (
    HTTP_TO_GRPC,
    SERVING,
    Code,
    Served,
    f32,
    grpc_server,
    post,
    server_fixture,
    statuses,
    stubs_fixture,
)

tei = stubs_fixture()
embedder = server_fixture(Task.EMBEDDING)
classifier = server_fixture(Task.CLASSIFICATION)
reranker = server_fixture(Task.RERANKER, limit=8)
splade = server_fixture(Task.SPARSE_EMBEDDING)


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


def test_a_message_over_4_mib_is_refused(embedder: Served) -> None:
    """gRPC's default receive limit, tonic's (TEI's) too; the server goes on serving."""
    pb = embedder.tei.pb
    with pytest.raises(grpc.RpcError) as too_big:
        embedder.stub("Embed").Embed(pb.EmbedRequest(inputs="x" * (5 << 20)))
    assert too_big.value.code() == Code.RESOURCE_EXHAUSTED
    answer = embedder.stub("Embed").Embed(pb.EmbedRequest(inputs="small"))
    np.testing.assert_array_equal(
        f32(answer.embeddings), f32(post(embedder, "/embed", {"inputs": "small"})[0])
    )


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
