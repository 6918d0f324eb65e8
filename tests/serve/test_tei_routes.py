"""TEI's native routes over a real socket, values checked against the model (real Engine over a
fake model: the engine's validation and batching are the real ones)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tei_ort.package import Task
from tei_ort.runtime.cpu import this_cpu
from tests.serve import expected
from tests.serve.conftest import real_engine
from tests.serve.fakes import MAX_INPUT_LENGTH, MINILM, FakeModel
from tests.serve.live import context, serve

TEXTS = ["What is Deep Learning?", "a", "The quick brown fox jumps over the lazy dog"]


def test_embed_matches_model_and_carries_headers(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    r = client.post("/embed", json={"inputs": TEXTS})
    assert r.status_code == 200
    np.testing.assert_allclose(
        r.json(), expected.embeddings(fake_models[Task.EMBEDDING], TEXTS), atol=1e-6
    )
    for header in (
        "x-compute-type",
        "x-compute-time",
        "x-compute-characters",
        "x-compute-tokens",
        "x-total-time",
        "x-tokenization-time",
        "x-queue-time",
        "x-inference-time",
    ):
        assert header in r.headers
    assert int(r.headers["x-compute-characters"]) == sum(map(len, TEXTS))
    model = fake_models[Task.EMBEDDING]
    assert int(r.headers["x-compute-tokens"]) == sum(len(e) for e in model.encode(TEXTS))


def test_embed_single_string_is_a_batch_of_one(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    body = client.post("/embed", json={"inputs": TEXTS[0]}).json()
    assert len(body) == 1
    np.testing.assert_allclose(
        body, expected.embeddings(fake_models[Task.EMBEDDING], TEXTS[:1]), atol=1e-6
    )


def test_embed_options(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    model = fake_models[Task.EMBEDDING]
    raw = client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json()
    np.testing.assert_allclose(raw, expected.embeddings(model, TEXTS, normalize=False), atol=1e-6)
    short = client.post("/embed", json={"inputs": TEXTS, "dimensions": 4}).json()
    np.testing.assert_allclose(short, expected.embeddings(model, TEXTS, dimensions=4), atol=1e-6)
    assert np.allclose(np.linalg.norm(short, axis=1), 1)
    prompted = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "query"}).json()
    np.testing.assert_allclose(
        prompted, expected.embeddings(model, TEXTS, prompt_name="query"), atol=1e-6
    )


def test_embed_token_ids(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    model = fake_models[Task.EMBEDDING]
    # Token ids are the whole sequence, special tokens included (used as given).
    ids = model.tokenizer.tokenize("hello world", add_special_tokens=True)
    token_ids = [t.id for t in ids]
    one = client.post("/embed", json={"inputs": token_ids}).json()
    both = client.post("/embed", json={"inputs": [token_ids, "hello world"]}).json()
    want = expected.embeddings(model, ["hello world"])
    np.testing.assert_allclose(one, want, atol=1e-6)
    np.testing.assert_allclose(both, [want[0], want[0]], atol=1e-6)


@pytest.mark.parametrize(("direction", "side"), [("Left", "left"), ("RIGHT", "right")])
def test_truncation_direction_any_case(embedding_server, direction: str, side: str) -> None:
    from transformers import AutoTokenizer

    client, _ = embedding_server
    long = " ".join(f"word{i}" for i in range(40))
    got = client.post("/embed", json={"inputs": long, "truncation_direction": direction})
    assert got.status_code == 200
    # The tokens transformers keeps when it cuts this text to 16 from that side, sent as token
    # ids (used as given): the same vector, so the server kept exactly these tokens.
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM), truncation_side=side)
    ids = tokenizer(long, truncation=True, max_length=MAX_INPUT_LENGTH)["input_ids"]
    kept = tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")
    assert kept.endswith("word39") if side == "left" else kept.startswith("word0word1")
    by_ids = client.post("/embed", json={"inputs": ids})
    np.testing.assert_allclose(got.json(), by_ids.json(), atol=1e-6)


def test_embed_all(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    model = fake_models[Task.EMBEDDING]
    body = client.post("/embed_all", json={"inputs": TEXTS[:2]}).json()
    states = model.forward_tokens(model.encode(TEXTS[:2]))
    assert [len(b) for b in body] == [len(s) for s in states]
    for got, want in zip(body, states, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_embed_sparse(sparse_server, fake_models) -> None:
    client, _ = sparse_server
    model = fake_models[Task.SPARSE_EMBEDDING]
    body = client.post("/embed_sparse", json={"inputs": ["hello world"]}).json()
    dense = model.forward(model.encode(["hello world"]))[0]
    want = {int(i): float(dense[i]) for i in np.flatnonzero(dense)}
    assert {e["index"]: e["value"] for e in body[0]} == pytest.approx(want)
    assert [e["index"] for e in body[0]] == sorted(want)


def test_predict_single_pair_and_batch(classifier_server, fake_models) -> None:
    client, _ = classifier_server
    model = fake_models[Task.CLASSIFICATION]
    single = client.post("/predict", json={"inputs": "great"}).json()
    probs = expected.scores(model, ["great"])[0]
    assert [p["label"] for p in single] == [model.manifest.id2label[i] for i in np.argsort(-probs)]
    assert [p["score"] for p in single] == pytest.approx(sorted(probs, reverse=True), abs=1e-6)
    pair = client.post("/predict", json={"inputs": ["a", "b"]}).json()
    assert pair == _labelled(model, expected.scores(model, [("a", "b")])[0])
    batch = client.post(
        "/predict", json={"inputs": [["great"], ["a", "b"]], "raw_scores": True}
    ).json()
    raw = expected.scores(model, ["great", ("a", "b")], raw=True)
    assert batch == [_labelled(model, row) for row in raw]


def _labelled(model: FakeModel, scores: np.ndarray) -> list[dict[str, object]]:
    """/predict's body for one input: every label with its score, best first."""
    return [
        {
            "label": model.manifest.id2label[int(i)],
            "score": pytest.approx(float(scores[i]), abs=1e-5),
        }
        for i in np.argsort(-scores, kind="stable")
    ]


def test_rerank_order_scores_top_n(reranker_server, fake_models) -> None:
    client, _ = reranker_server
    model = fake_models[Task.RERANKER]
    texts = ["paris is in france", "bananas", "the capital of france is paris", "x"]
    scores = expected.scores(model, [("capital of france?", t) for t in texts])[:, 0]
    body = client.post(
        "/rerank", json={"query": "capital of france?", "texts": texts, "return_text": True}
    ).json()
    assert [r["index"] for r in body] == list(np.argsort(-scores, kind="stable"))
    assert [r["score"] for r in body] == pytest.approx(sorted(scores, reverse=True), abs=1e-6)
    assert all(r["text"] == texts[r["index"]] for r in body)
    top = client.post(
        "/rerank", json={"query": "capital of france?", "texts": texts, "top_n": 2}
    ).json()
    assert top == [{"index": r["index"], "score": pytest.approx(r["score"])} for r in body[:2]]


def test_similarity(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    model = fake_models[Task.EMBEDDING]
    body = client.post(
        "/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b", "a"]}}
    ).json()
    vectors = expected.embeddings(model, ["a", "b", "a"])
    assert body == pytest.approx([float(vectors[1] @ vectors[0]), 1.0], abs=1e-5)


def test_tokenize_and_decode(embedding_server) -> None:
    client, _ = embedding_server
    tokens = client.post("/tokenize", json={"inputs": "hello world"}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokens[0][1] == {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5}
    bare = client.post("/tokenize", json={"inputs": ["hello"], "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == [7592]
    assert client.post("/decode", json={"ids": [101, 7592, 2088, 102]}).json() == ["hello world"]
    assert client.post("/decode", json={"ids": [[7592], [2088]]}).json() == ["hello", "world"]
    kept = client.post("/decode", json={"ids": [101, 7592], "skip_special_tokens": False}).json()
    assert kept == ["[CLS] hello"]


def test_info_health_metrics_models(embedding_server, classifier_server) -> None:
    client, _ = embedding_server
    info = client.get("/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_client_batch_size"] == 8 and info["max_input_length"] == 16
    assert {
        "model_id",
        "model_sha",
        "model_dtype",
        "served_model_name",
        "max_concurrent_requests",
        "max_batch_tokens",
        "max_batch_requests",
        "auto_truncate",
        "tokenization_workers",
        "version",
        "sha",
        "docker_label",
    } <= set(info)
    # Ours: the fake context says nothing of the provider or the CPU.
    assert [info[k] for k in ("provider", "variant", "isa_class", "cpu", "variant_note")] == [
        None,
        None,
        "",
        "",
        "",
    ]
    for path in ("/health", "/", "/ping"):
        r = client.get(path)
        assert r.status_code == 200 and r.content == b""
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert client.get("/v1/models").json()["data"][0]["id"] == "fake-model"
    labels = classifier_server[0].get("/info").json()["model_type"]["classifier"]
    assert labels["id2label"] == {"0": "negative", "1": "positive", "2": "neutral"}
    assert labels["label2id"]["positive"] == 1


def test_info_says_which_provider_variant_and_cpu_class(fake_models) -> None:
    here = this_cpu()
    ctx = context(
        real_engine(fake_models[Task.EMBEDDING]),
        provider="cpu",
        variant="int8",
        dtype="int8",
        cpu=here.describe(),
        isa_class=here.isa_class.value,
        variant_note="int8: VNNI on this CPU",
    )
    with serve(ctx) as url:
        info = httpx.get(f"{url}/info", timeout=30).json()
    assert info["provider"] == "cpu" and info["variant"] == "int8"
    assert info["model_dtype"] == "int8"
    assert info["isa_class"] == here.isa_class.value
    assert info["cpu"] == here.describe() and info["cpu"].endswith(f"[{here.isa_class.value}]")
    assert info["variant_note"] == "int8: VNNI on this CPU"


def test_docs_and_openapi_are_self_contained(embedding_server) -> None:
    client, _ = embedding_server
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    spec = client.get("/api-doc/openapi.json").json()
    for path in (
        "/embed",
        "/embed_all",
        "/embed_sparse",
        "/predict",
        "/rerank",
        "/similarity",
        "/tokenize",
        "/decode",
        "/v1/embeddings",
        "/embeddings",
        "/v1/rerank",
        "/v2/rerank",
        "/vertex",
        "/invocations",
    ):
        assert "post" in spec["paths"][path], path
    assert "EmbedBody" in spec["components"]["schemas"]
    # Several models: every body may name one; an unknown name is a documented 404.
    assert "model" in spec["components"]["schemas"]["EmbedBody"]["properties"]
    assert "404" in spec["paths"]["/embed"]["post"]["responses"]
    assert "`models`" in spec["paths"]["/info"]["get"]["summary"]


def test_a_big_client_batch_is_one_request(fake_models) -> None:
    # max_client_batch_size counts inputs per request; the engine splits them across batches.
    from tei_ort.engine import Engine, EngineConfig
    from tests.serve.conftest import _client

    model: FakeModel = fake_models[Task.EMBEDDING]
    texts = [f"text number {i}" for i in range(1000)]
    engine = Engine(model, EngineConfig(max_batch_tokens=512))
    for client, _ in _client(engine):
        body = client.post("/embed", json={"inputs": texts}).json()
        np.testing.assert_allclose(body, expected.embeddings(model, texts), atol=1e-6)
