"""Ollama's embedding API with the official `ollama` client pointed at a real socket: /api/embed
(string or list input, truncate, dimensions, keep_alive and options accepted) and the older
/api/embeddings, every vector checked against the fake model; errors in Ollama's `{"error"}` shape
with its 400 for bad requests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import ollama
import pytest

from tei_ort.package import Task
from tests.serve import expected
from tests.serve.fakes import FakeModel

TEXTS = ["hello world", "What is Deep Learning?"]
LONG = " ".join(f"w{i}" for i in range(40))  # over the fake model's 16 tokens


@pytest.fixture(scope="module")
def client(embedding_server) -> Iterator[ollama.Client]:
    http, _ = embedding_server
    yield ollama.Client(host=str(http.base_url).rstrip("/"))


@pytest.fixture(scope="module")
def model(fake_models: dict[Task, FakeModel]) -> FakeModel:
    return fake_models[Task.EMBEDDING]


def test_embed_list_and_string(client: ollama.Client, model: FakeModel) -> None:
    result = client.embed(model="all-minilm", input=TEXTS, keep_alive="5m", options={"num_ctx": 8})
    np.testing.assert_allclose(result.embeddings, expected.embeddings(model, TEXTS), atol=1e-6)
    assert result.model == "all-minilm"  # echoed, as Ollama does
    tokens = sum(len(e) for e in model.encode(TEXTS))
    assert result.prompt_eval_count == tokens
    assert result.total_duration is not None and result.total_duration > 0
    one = client.embed(model="all-minilm", input=TEXTS[1], keep_alive=0)
    np.testing.assert_allclose(one.embeddings, expected.embeddings(model, TEXTS[1:]), atol=1e-6)


def test_embed_dimensions_as_ollama(client: ollama.Client, model: FakeModel) -> None:
    short = client.embed(model="m", input=TEXTS, dimensions=4)
    want = expected.embeddings(model, TEXTS, dimensions=4)  # truncated, then re-normalized
    np.testing.assert_allclose(short.embeddings, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(short.embeddings, axis=1), 1.0, atol=1e-6)
    # Ollama truncates only below the model's size and leaves the vector whole otherwise.
    for ignored in (8, 100):
        whole = client.embed(model="m", input=TEXTS, dimensions=ignored)
        np.testing.assert_allclose(whole.embeddings, expected.embeddings(model, TEXTS), atol=1e-6)


def test_embed_truncate(client: ollama.Client, model: FakeModel) -> None:
    truncated = client.embed(model="m", input=[LONG])  # Ollama's default: truncate
    np.testing.assert_allclose(truncated.embeddings, expected.embeddings(model, [LONG]), atol=1e-6)
    assert truncated.prompt_eval_count == 16
    with pytest.raises(ollama.ResponseError) as failure:
        client.embed(model="m", input=[LONG], truncate=False)
    assert failure.value.status_code == 400
    assert "must have less than 16 tokens" in failure.value.error


def test_empty_input_answers_no_vectors(client: ollama.Client) -> None:
    # Ollama's way to load a model: an empty request, an empty answer.
    assert client.embed(model="m", input=[]).embeddings == []
    assert client.embed(model="m", input="").embeddings == []
    assert client.embeddings(model="m", prompt="").embedding == []


def test_older_embeddings_route(client: ollama.Client, model: FakeModel) -> None:
    result = client.embeddings(model="m", prompt=TEXTS[0], keep_alive="1m")
    # The model's own output: the fake model has no Normalize module.
    want = expected.embeddings(model, TEXTS[:1], normalize=False)[0]
    np.testing.assert_allclose(result.embedding, want, atol=1e-6)
    assert abs(np.linalg.norm(result.embedding) - 1.0) > 0.01


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/embed", {"input": [1, 2]}, "input"),
        ("/api/embed", {"input": "x", "truncate": "maybe"}, "truncate"),
        ("/api/embed", {"input": ["a"] * 9}, "batch size"),
        ("/api/embeddings", {"prompt": ["a"]}, "prompt"),
    ],
)
def test_bad_requests_in_ollamas_shape(embedding_server, path: str, body: dict, words: str) -> None:
    http, _ = embedding_server
    got = http.post(path, json=body)
    assert got.status_code == 400, got.text
    assert list(got.json()) == ["error"] and words in got.json()["error"]


def test_malformed_json_and_wrong_model_type(embedding_server, classifier_server) -> None:
    http, _ = embedding_server
    got = http.post(
        "/api/embed", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert got.status_code == 400 and "not valid JSON" in got.json()["error"]
    classifier, _ = classifier_server
    wrong = classifier.post("/api/embed", json={"input": "x"})
    assert wrong.status_code == 424 and list(wrong.json()) == ["error"]


def test_openapi_documents_ollama(embedding_server) -> None:
    http: httpx.Client = embedding_server[0]
    paths = http.get("/api-doc/openapi.json").json()["paths"]
    for path in ("/api/embed", "/api/embeddings"):
        error = paths[path]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
        assert error["required"] == ["error"] and "error_type" not in error["properties"]
