"""Cohere/Jina rerank, POST / and /invocations dispatch, /vertex, and the request bodies captured
from real clients (compat-contract.md 2.1) replayed against the server."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tei_ort.package import Task
from tests.serve import expected
from tests.serve.fakes import FakeModel

DOCS = ["paris is in france", "bananas", "the capital of france is paris"]


def _order(model, query: str, texts: list[str]) -> tuple[list[int], np.ndarray]:
    scores = expected.scores(model, [(query, t) for t in texts])[:, 0]
    return list(np.argsort(-scores, kind="stable")), scores


def _predicted(model: FakeModel, text: str) -> list[dict[str, object]]:
    """/predict's body for one text: every label with its probability, best first."""
    probs = expected.scores(model, [text])[0]
    return [
        {
            "label": model.manifest.id2label[int(i)],
            "score": pytest.approx(float(probs[i]), abs=1e-6),
        }
        for i in np.argsort(-probs, kind="stable")
    ]


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
        assert labels == _predicted(fake_models[Task.CLASSIFICATION], "great")
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


# compat-contract.md 2.1, verbatim: (server fixture, path, body, check). Each check compares
# the values with the fake model's, computed directly.
Models = dict[Task, FakeModel]


def _vectors(texts: list[str], normalize: bool = True):  # type: ignore[no-untyped-def]
    def check(body: object, models: Models) -> None:
        want = expected.embeddings(models[Task.EMBEDDING], texts, normalize=normalize)
        np.testing.assert_allclose(body, want, atol=1e-6)

    return check


def _similarity(source: str, sentences: list[str]):  # type: ignore[no-untyped-def]
    def check(body: object, models: Models) -> None:
        vectors = expected.embeddings(models[Task.EMBEDDING], [source, *sentences])
        np.testing.assert_allclose(body, vectors[1:] @ vectors[0], atol=1e-5)

    return check


def _labels(text: str):  # type: ignore[no-untyped-def]
    def check(body: list[dict[str, object]], models: Models) -> None:
        assert body == _predicted(models[Task.CLASSIFICATION], text)

    return check


def _ranked(texts: list[str], shape: str = "tei"):  # type: ignore[no-untyped-def]
    """shape: "tei" (TEI's /rerank list), "tei+text" (with return_text), or "infinity" (a
    {results: [...]} body with documents, for Infinity's Cohere-shaped body on /rerank)."""

    def check(body: object, models: Models) -> None:
        model = models[Task.RERANKER]
        order, scores = _order(model, "q", texts)
        pairs = [("q", t) for t in texts]
        score = {i: pytest.approx(float(scores[i]), abs=1e-6) for i in order}
        if shape == "infinity":
            assert body == {
                "model": "fake-model",
                "usage": {"total_tokens": sum(len(e) for e in model.encode(pairs))},
                "results": [
                    {"index": i, "relevance_score": score[i], "document": {"text": texts[i]}}
                    for i in order
                ],
            }
        else:
            with_text = shape == "tei+text"
            assert body == [
                {"index": i, "score": score[i], **({"text": texts[i]} if with_text else {})}
                for i in order
            ]

    return check


CAPTURED = [
    (
        "embedding_server",
        "/",
        {"inputs": ["a", "b"], "normalize": True, "truncate": True},
        _vectors(["a", "b"]),
    ),
    (
        "embedding_server",
        "/",
        {"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}, "parameters": {}},
        _similarity("a", ["b", "c"]),
    ),
    ("classifier_server", "/", {"inputs": "great", "parameters": {}}, _labels("great")),
    (
        "embedding_server",
        "/",
        {"inputs": "q", "normalize": False, "truncate": True},
        _vectors(["q"], normalize=False),
    ),
    (
        "reranker_server",
        "/rerank",
        {"query": "q", "texts": ["d1", "d2"], "raw_scores": False},
        _ranked(["d1", "d2"]),
    ),
    ("embedding_server", "/embed", {"inputs": ["a", "b"], "truncate": True}, _vectors(["a", "b"])),
    ("reranker_server", "/rerank", {"query": "q", "texts": ["d1", "d2"]}, _ranked(["d1", "d2"])),
    ("embedding_server", "/", {"inputs": ["a", "b"]}, _vectors(["a", "b"])),
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
        _ranked(["d1", "d2"], "tei+text"),
    ),
    (
        "reranker_server",
        "/rerank",
        {"model": "rr", "query": "q", "documents": ["d1", "d2"], "return_documents": True},
        _ranked(["d1", "d2"], "infinity"),
    ),
    (
        "embedding_server",
        "/embed",
        {"inputs": ["a", "b"], "options": {"wait_for_model": True, "use_cache": True}},
        _vectors(["a", "b"]),
    ),
]


@pytest.mark.parametrize(("server", "path", "body", "check"), CAPTURED)
def test_captured_bodies(request, fake_models, server, path, body, check) -> None:
    client, _ = request.getfixturevalue(server)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    check(r.json(), fake_models)


def test_openai_captured_default_body(embedding_server, fake_models) -> None:
    client, _ = embedding_server
    model = fake_models[Task.EMBEDDING]
    body = client.post(
        "/v1/embeddings", json={"model": "m", "input": ["a", "b"], "encoding_format": "base64"}
    ).json()
    # Base64 of the little-endian float32 bytes, as OpenAI's Python client decodes them.
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    np.testing.assert_allclose(decoded, expected.embeddings(model, ["a", "b"]), atol=1e-6)
