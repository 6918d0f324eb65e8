"""Several models in one server (issue 13, item 2), over a real socket with the real engine over
fake models: routing by `model` on every API, 404s in each API's error body, /v1/models, /info,
the `model` label on metrics, per-model limits, and a busy model not starving another.
tests/serve/test_multi_model_real.py serves real tiny graphs under mixed load."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tei_ort.engine import Engine, EngineConfig
from tei_ort.errors import ValidationError
from tei_ort.package import Task
from tei_ort.serve.registry import ModelRegistry
from tei_ort.serve.settings import load_settings
from tests.serve import expected
from tests.serve.fakes import GATE_TIMEOUT_S, FakeEngine, FakeModel, SlowModel
from tests.serve.live import context, serve
from tests.serve.scrape import scrape, value

TEXTS = ["What is Deep Learning?", "a", "The quick brown fox jumps over the lazy dog"]
QUERY = "what is deep learning"
EMB_CONCURRENCY = 2  # the embedder's own --max-concurrent-requests


@dataclass
class Server:
    client: httpx.Client
    embedder: SlowModel
    reranker: FakeModel
    sparse: FakeModel


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    embedder = SlowModel(Task.EMBEDDING, forward_s=0.0)
    reranker, sparse = FakeModel(Task.RERANKER), FakeModel(Task.SPARSE_EMBEDDING)
    registry = ModelRegistry(
        (
            # Each model its own engine and limits: the embedder admits only two requests.
            context(
                Engine(embedder, EngineConfig(max_concurrent_requests=EMB_CONCURRENCY)),
                model_id="org/emb",
                served_model_name="emb",
            ),
            context(Engine(reranker, EngineConfig()), model_id="org/rr", served_model_name="rr"),
            context(Engine(sparse, EngineConfig()), model_id="org/sp", served_model_name="sp"),
        )
    )
    with serve(registry) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield Server(client, embedder, reranker, sparse)


def _scores(model: FakeModel, texts: list[str]) -> list[float]:
    return [float(s) for s in expected.scores(model, [[QUERY, t] for t in texts])[:, 0]]


def test_tei_routes_take_an_optional_model_and_default_to_the_first(server: Server) -> None:
    c = server.client
    vectors = expected.embeddings(server.embedder, TEXTS)
    for body in ({"inputs": TEXTS}, {"inputs": TEXTS, "model": "emb"}):
        r = c.post("/embed", json=body)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json(), vectors, atol=1e-6)
    r = c.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": "rr"})
    assert r.status_code == 200, r.text
    by_index = {item["index"]: item["score"] for item in r.json()}
    np.testing.assert_allclose(
        [by_index[i] for i in range(len(TEXTS))], _scores(server.reranker, TEXTS), rtol=1e-5
    )
    r = c.post("/embed_sparse", json={"inputs": "hello world", "model": "sp"})
    assert r.status_code == 200, r.text
    ids = server.sparse.encode(["hello world"])[0].ids
    assert sorted(e["index"] for e in r.json()[0]) == sorted(set(ids.tolist()))
    r = c.post("/tokenize", json={"inputs": "hello", "model": "sp"})
    assert [t["id"] for t in r.json()[0]] == server.sparse.encode(["hello"])[0].ids.tolist()
    # /predict on the re-ranker scores a pair; on the default embedder it is the wrong model type.
    r = c.post("/predict", json={"inputs": [QUERY, TEXTS[0]], "model": "rr"})
    assert r.status_code == 200 and r.json()[0]["score"] == pytest.approx(
        _scores(server.reranker, TEXTS[:1])[0], rel=1e-5
    )
    assert c.post("/predict", json={"inputs": [QUERY, TEXTS[0]]}).status_code == 424
    # POST / picks the route by body shape and the routed model's task.
    r = c.post("/", json={"inputs": "hello world", "model": "sp"})
    assert r.status_code == 200 and sorted(e["index"] for e in r.json()[0]) == sorted(set(ids))
    r = c.post("/", json={"inputs": TEXTS})
    assert r.status_code == 200 and np.allclose(r.json(), vectors, atol=1e-6)
    assert c.post("/embed", json={"inputs": "a", "model": "rr"}).status_code == 424


def test_openai_cohere_jina_and_ollama_route_by_model(server: Server) -> None:
    c = server.client
    vectors = expected.embeddings(server.embedder, TEXTS)
    r = c.post("/v1/embeddings", json={"input": TEXTS, "model": "emb"})
    assert r.status_code == 200 and r.json()["model"] == "emb"
    np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], vectors, atol=1e-6)
    r = c.post("/api/embed", json={"input": TEXTS, "model": "emb"})
    assert r.status_code == 200 and r.json()["model"] == "emb"
    np.testing.assert_allclose(r.json()["embeddings"], vectors, atol=1e-6)
    r = c.post("/v2/embed", json={"texts": TEXTS, "model": "emb", "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["embeddings"]["float"], vectors, atol=1e-6)
    scores = _scores(server.reranker, TEXTS)
    for path in ("/v1/rerank", "/v2/rerank"):  # Jina's, Cohere's
        r = c.post(path, json={"query": QUERY, "documents": TEXTS, "model": "rr"})
        assert r.status_code == 200, (path, r.text)
        results = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
        np.testing.assert_allclose([results[i] for i in range(len(TEXTS))], scores, rtol=1e-5)
    # Routed, not just echoed: the embedder behind `rr` would have answered 424 to a rerank.
    r = c.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, "model": "emb"})
    assert r.status_code == 424


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/embed", {"inputs": "a"}, lambda b: b["error_type"] == "NotFound"),
        ("/rerank", {"query": "q", "texts": ["a"]}, lambda b: b["error_type"] == "NotFound"),
        ("/tokenize", {"inputs": "a"}, lambda b: b["error_type"] == "NotFound"),
        ("/v1/rerank", {"query": "q", "documents": ["a"]}, lambda b: "error" in b),
        ("/v1/embeddings", {"input": "a"}, lambda b: b["error"]["code"] == 404),
        ("/v2/embed", {"texts": ["a"], "embedding_types": ["float"]}, lambda b: "message" in b),
        ("/api/embed", {"input": "a"}, lambda b: isinstance(b["error"], str)),
    ],
)
def test_an_unknown_model_is_404_in_the_apis_error_body(
    server: Server, path: str, body: dict[str, object], error: object
) -> None:
    r = server.client.post(path, json={**body, "model": "nope"})
    assert r.status_code == 404, r.text
    answer = r.json()
    assert error(answer), answer  # type: ignore[operator]
    text = str(answer)
    assert "'nope'" in text and "emb, rr, sp" in text  # names the served models


def test_models_and_info_list_every_model(server: Server) -> None:
    c = server.client
    models = c.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["emb", "rr", "sp"]
    info = c.get("/info").json()
    # TEI's fields describe the first model, as with one model served.
    assert (info["model_id"], info["served_model_name"]) == ("org/emb", "emb")
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_concurrent_requests"] == EMB_CONCURRENCY
    by_name = {m["served_model_name"]: m for m in info["models"]}
    assert list(by_name) == ["emb", "rr", "sp"]
    assert set(by_name["rr"]["model_type"]) == {"reranker"}
    assert by_name["sp"]["model_type"] == {"embedding": {"pooling": "splade"}}
    assert by_name["emb"]["outputs"] == {"/embed": "dense", "/embed_all": "token_embeddings"}
    assert by_name["rr"]["outputs"] == {"/rerank": "scores", "/predict": "scores"}
    assert by_name["sp"]["outputs"] == {"/embed_sparse": "sparse"}
    assert by_name["rr"]["max_concurrent_requests"] == 512  # its own limits
    assert {k: v for k, v in info.items() if k not in ("models", "resident_memory_bytes")} == (
        by_name["emb"]
    )
    assert info["resident_memory_bytes"] > 10e6


def test_every_te_series_carries_the_model_label(server: Server) -> None:
    c = server.client
    before = scrape(c)
    assert c.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": "rr"}).is_success
    assert c.post("/embed_sparse", json={"inputs": ["a", "b"], "model": "sp"}).is_success
    assert c.post("/embed", json={"inputs": "a", "model": "nope"}).status_code == 404
    after = scrape(c)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("te_request_count", method="batch", model="rr") == 1
    assert moved("te_predict_count", model="rr") == len(TEXTS)
    assert moved("te_embed_count", model="sp") == 2
    assert moved("te_embed_count", model="emb") == 0
    assert moved("te_batch_next_size_count", model="sp") >= 1
    assert moved("te_request_failure", err="model_not_found", model="") == 1
    for name in ("te_queue_size", "te_request_in_flight"):
        assert {dict(labels)["model"] for (n, labels) in after if n == name} == {"emb", "rr", "sp"}
    info = {dict(labels)["model"]: dict(labels) for (n, labels) in after if n == "te_model_info"}
    assert {name: labels["model_id"] for name, labels in info.items()} == {
        "emb": "org/emb",
        "rr": "org/rr",
        "sp": "org/sp",
    }
    assert info["rr"]["task"] == "reranker"
    te_names = {n for (n, labels) in after if n.startswith("te_")}
    unlabelled = {n for (n, labels) in after if n.startswith("te_") and "model" not in dict(labels)}
    assert te_names and not unlabelled


def test_a_busy_model_neither_starves_nor_limits_another(server: Server) -> None:
    """The embedder's forward is held while it is flooded past its own admission limit; the
    re-ranker answers meanwhile. Synchronised on the model's gate and `entered`, not on time."""
    c, embedder = server.client, server.embedder
    embedder.gate.clear()
    try:
        with ThreadPoolExecutor(EMB_CONCURRENCY) as pool:
            held = [
                pool.submit(c.post, "/embed", json={"inputs": [f"t{i}"], "model": "emb"})
                for i in range(EMB_CONCURRENCY)
            ]
            assert embedder.entered.acquire(timeout=GATE_TIMEOUT_S)  # a forward is held
            # Admission counts every admitted request: wait until both are in.
            _wait_for(lambda: value(scrape(c), "te_request_in_flight", model="emb") == 2)
            refused = c.post("/embed", json={"inputs": "x", "model": "emb"})
            assert refused.status_code == 429, refused.text  # the embedder's own limit
            r = c.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": "rr"})
            assert r.status_code == 200, r.text
            assert r.json()[0]["score"] == pytest.approx(max(_scores(server.reranker, TEXTS)))
            assert not any(f.done() for f in held)  # the embedder really was busy throughout
            embedder.gate.set()
            assert [f.result().status_code for f in held] == [200] * EMB_CONCURRENCY
    finally:
        embedder.gate.set()


def _wait_for(condition: object) -> None:
    """Polls a condition on the server's own gauges (no sleeps: each scrape is a round trip)."""
    for _ in range(2000):
        if condition():  # type: ignore[operator]
            return
    raise AssertionError("condition not reached")


def test_one_model_does_not_check_the_model_field() -> None:
    """TEI ignores `model`: with one model served, any name reaches it (clients send their
    provider's model names)."""
    model = FakeModel(Task.EMBEDDING)
    with serve(context(Engine(model, EngineConfig()))) as url:
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "a", "model": "gpt"}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "fake-model"
        r = httpx.post(f"{url}/embed", json={"inputs": "a", "model": "whatever"}, timeout=30)
        assert r.status_code == 200


def test_model_flags_pair_names_with_ids_in_order() -> None:
    s = load_settings(["--model-id", "a", "--model-id", "b", "--served-model-name", "A"], {})
    assert [(one.model_id, one.served_model_name) for one in s.per_model()] == [
        ("a", "A"),
        ("b", None),  # fewer names than models: the model id names it
    ]
    env = {"MODEL_ID": "a, b,c", "SERVED_MODEL_NAME": "A,B", "POOLING": "mean"}
    per_model = load_settings([], env).per_model()
    assert [(one.model_id, one.served_model_name) for one in per_model] == [
        ("a", "A"),
        ("b", "B"),
        ("c", None),
    ]
    # The first model's --pooling does not reach the others, nor do the extra ids leak.
    assert [one.pooling for one in per_model] == ["mean", None, None]
    assert all(not one.more_model_ids for one in per_model)
    single = load_settings(["--model-id", "a"], {})
    assert (single.model_id, single.more_model_ids, single.per_model()[0].model_id) == (
        "a",
        (),
        "a",
    )
    with pytest.raises(ValueError, match="more --served-model-name"):
        load_settings(
            ["--model-id", "a", "--served-model-name", "A", "--served-model-name", "B"], {}
        )


def test_two_models_under_one_name_are_refused() -> None:
    model = FakeModel(Task.EMBEDDING)
    ctx = context(Engine(model, EngineConfig()))
    with pytest.raises(ValidationError, match="fake-model"):
        ModelRegistry((ctx, ctx))
    assert ModelRegistry((ctx,)).resolve(threading.Event()) is ctx  # one model: not checked


def test_health_needs_every_model_and_every_engine_starts_and_stops() -> None:
    first, second = FakeEngine(FakeModel(Task.EMBEDDING)), FakeEngine(FakeModel(Task.RERANKER))
    registry = ModelRegistry(
        (
            context(first, served_model_name="a"),
            context(second, served_model_name="b"),
        )
    )
    with serve(registry) as url:
        assert first.started and second.started
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        second.healthy = False
        r = httpx.get(f"{url}/health", timeout=30)
        assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
    assert not first.started and not second.started
