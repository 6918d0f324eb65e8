"""Cohere/Jina rerank, POST / and /invocations dispatch, /vertex, and the request bodies captured
from real clients (compat-contract.md 2.1) replayed against the server."""

from __future__ import annotations

import numpy as np
import pytest

from tei_ort.package import Task
from tests.serve import expected

DOCS = ["paris is in france", "bananas", "the capital of france is paris"]


def _order(model, query: str, texts: list[str]) -> tuple[list[int], np.ndarray]:
    scores = expected.scores(model, [(query, t) for t in texts])[:, 0]
    return list(np.argsort(-scores, kind="stable")), scores


@pytest.mark.parametrize(
    ("path", "documents_by_default"), [("/v1/rerank", True), ("/v2/rerank", False)]
)
def test_cohere_jina_rerank(reranker_server, fake_models, path, documents_by_default) -> None:
    client, _ = reranker_server
    order, scores = _order(fake_models[Task.RERANKER], "q", DOCS)
    docs = [DOCS[0], {"text": DOCS[1]}, DOCS[2]]
    body = client.post(path, json={"model": "rr", "query": "q", "documents": docs}).json()
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(scores[order], abs=1e-6)
    assert all(("document" in r) == documents_by_default for r in body["results"])
    top = client.post(
        path, json={"query": "q", "documents": DOCS, "top_n": 1, "return_documents": True}
    ).json()
    assert top["results"] == [
        {
            "index": order[0],
            "relevance_score": pytest.approx(scores[order[0]]),
            "document": {"text": DOCS[order[0]]},
        }
    ]
    assert ("meta" in body) == (path == "/v2/rerank") and ("usage" in body) == (
        path == "/v1/rerank"
    )


def test_root_dispatch_by_model_type(
    embedding_server, classifier_server, reranker_server, fake_models
) -> None:
    for path in ("/", "/invocations"):
        emb = embedding_server[0].post(path, json={"inputs": ["a", "b"]}).json()
        np.testing.assert_allclose(
            emb, expected.embeddings(fake_models[Task.EMBEDDING], ["a", "b"]), atol=1e-6
        )
        labels = classifier_server[0].post(path, json={"inputs": "great"}).json()
        assert labels[0]["label"] in {"negative", "positive", "neutral"}
        ranked = reranker_server[0].post(path, json={"query": "q", "texts": DOCS}).json()
        assert [r["index"] for r in ranked] == _order(fake_models[Task.RERANKER], "q", DOCS)[0]


def test_vertex(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    body = client.post(
        "/vertex", json={"instances": [{"inputs": "a"}, {"inputs": ["b", "c"]}]}
    ).json()
    model = fake_models[Task.EMBEDDING]
    np.testing.assert_allclose(body["predictions"][0], expected.embeddings(model, ["a"]), atol=1e-6)
    np.testing.assert_allclose(
        body["predictions"][1], expected.embeddings(model, ["b", "c"]), atol=1e-6
    )


# compat-contract.md 2.1, verbatim: (server fixture, path, body, check).
def _is_vectors(n: int, normalized: bool):
    def check(body, model) -> None:
        assert len(body) == n
        assert np.allclose(np.linalg.norm(body, axis=1), 1) == normalized

    return check


CAPTURED = [
    (
        "embedding_server",
        "/",
        {"inputs": ["a", "b"], "normalize": True, "truncate": True},
        _is_vectors(2, True),
    ),
    (
        "embedding_server",
        "/",
        {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}, "parameters": {}},
        lambda body, m: (
            (len(body) == 2 and all(-1 <= s <= 1.0001 for s in body)) or pytest.fail(str(body))
        ),
    ),
    (
        "classifier_server",
        "/",
        {"inputs": "great", "parameters": {}},
        lambda body, m: (
            [x["score"] for x in body] == sorted((x["score"] for x in body), reverse=True)
            or pytest.fail()
        ),
    ),
    (
        "embedding_server",
        "/",
        {"inputs": "q", "normalize": False, "truncate": True},
        _is_vectors(1, False),
    ),
    (
        "reranker_server",
        "/rerank",
        {"query": "q", "texts": ["d1", "d2"], "raw_scores": False},
        lambda body, m: {r["index"] for r in body} == {0, 1} or pytest.fail(),
    ),
    ("embedding_server", "/embed", {"inputs": ["a", "b"], "truncate": True}, _is_vectors(2, True)),
    (
        "reranker_server",
        "/rerank",
        {"query": "q", "texts": ["d1", "d2"]},
        lambda body, m: len(body) == 2 or pytest.fail(),
    ),
    ("embedding_server", "/", {"inputs": ["a", "b"]}, _is_vectors(2, True)),
    (
        "reranker_server",
        "/rerank",
        {
            "raw_scores": False,
            "truncation_direction": "Right",
            "query": "q",
            "texts": ["d1", "d2"],
            "return_text": True,
        },
        lambda body, m: {r["text"] for r in body} == {"d1", "d2"} or pytest.fail(),
    ),
    (
        "reranker_server",
        "/rerank",
        {"model": "rr", "query": "q", "documents": ["d1", "d2"], "return_documents": True},
        lambda body, m: (
            {r["document"]["text"] for r in body["results"]} == {"d1", "d2"} or pytest.fail()
        ),
    ),
    (
        "embedding_server",
        "/embed",
        {"inputs": ["a", "b"], "options": {"wait_for_model": True, "use_cache": True}},
        _is_vectors(2, True),
    ),
]


@pytest.mark.parametrize(("server", "path", "body", "check"), CAPTURED)
def test_captured_bodies(request, fake_models, server, path, body, check) -> None:
    client, _ = request.getfixturevalue(server)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    check(r.json(), fake_models)


def test_openai_captured_default_body(embedding_server) -> None:
    client, _ = embedding_server
    body = client.post(
        "/v1/embeddings", json={"model": "m", "input": ["a", "b"], "encoding_format": "base64"}
    ).json()
    assert [len(d["embedding"]) for d in body["data"]] == [
        44,
        44,
    ]  # 8 float32 = 32 bytes -> 44 chars
