"""tei.v1 streams over a real socket: thousands of messages answered in order and equal to the HTTP
routes' answers, the first error ending a stream, cancellation mid-stream dropping its work,
admission waited for, and a stream in flight at shutdown answered to its end."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tei_ort.package import Task
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import create_app
from tei_ort.serve.grpc import attach_grpc
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
    http_embed,
    http_embed_url,
    post,
    server_fixture,
    stubs_fixture,
    texts,
)

tei = stubs_fixture()
embedder = server_fixture(Task.EMBEDDING)
classifier = server_fixture(Task.CLASSIFICATION)
reranker = server_fixture(Task.RERANKER, limit=8)
splade = server_fixture(Task.SPARSE_EMBEDDING)


# -- streams ---------------------------------------------------------------------------------


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
