"""Bad input: status AND body, and the server still answers correctly afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from tei_ort import errors
from tei_ort.package import Task
from tests.serve import expected
from tests.serve.conftest import MAX_CLIENT_BATCH_SIZE
from tests.serve.live import PAYLOAD_LIMIT

LONG = " ".join(f"word{i}" for i in range(40))  # > 16 tokens, the fake model's limit

CASES = [
    # (path, raw body or JSON, status, error_type, words in the message)
    ("/embed", b"{not json", 400, "Validation", "not valid JSON"),
    ("/embed", b"", 400, "Validation", "not valid JSON"),
    ("/embed", [1, 2], 422, "Validation", "JSON object"),
    ("/embed", {"inputs": 3}, 422, "Validation", "inputs"),
    ("/embed", {"inputs": "a", "normalize": "maybe"}, 422, "Validation", "normalize"),
    (
        "/embed",
        {"inputs": "a", "truncation_direction": "up"},
        422,
        "Validation",
        "truncation_direction",
    ),
    ("/embed", {}, 422, "Validation", "inputs"),
    ("/embed", {"inputs": []}, 400, "Empty", ""),
    ("/embed", {"inputs": ["x"] * (MAX_CLIENT_BATCH_SIZE + 1)}, 422, "Validation", "batch size"),
    (
        "/embed",
        {"inputs": LONG, "truncate": False},
        422,
        "Validation",
        "must have less than 16 tokens",
    ),
    ("/embed", {"inputs": "a", "dimensions": 0}, 422, "Validation", "dimensions"),
    ("/embed", {"inputs": "a", "dimensions": 9}, 422, "Validation", "dimensions"),
    ("/embed", {"inputs": "a", "prompt_name": "nope"}, 422, "Validation", "nope"),
    ("/embed", {"inputs": [-1]}, 422, "Validation", "inputs"),
    ("/rerank", {"query": "q", "texts": ["a"]}, 424, "Backend", ""),
    ("/predict", {"inputs": "a"}, 424, "Backend", ""),
    ("/embed_sparse", {"inputs": "a"}, 424, "Backend", ""),
    ("/predict", {"inputs": ["a", "b", "c"]}, 422, "Validation", "[text, text]"),
    ("/tokenize", {"inputs": []}, 400, "Empty", ""),
    ("/decode", {"ids": []}, 400, "Empty", ""),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}, 400, "Empty", ""),
    ("/vertex", {"instances": "x"}, 422, "Validation", "instances"),
    ("/embed", b"x" * (PAYLOAD_LIMIT + 1), 413, "Validation", "size limit"),
]


@pytest.mark.parametrize(("path", "body", "status", "error_type", "words"), CASES)
def test_bad_input(embedding_server, fake_models, path, body, status, error_type, words) -> None:
    client, _ = embedding_server
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert set(payload) == {"error", "error_type"}
    assert payload["error_type"] == error_type
    assert words in payload["error"]
    assert "Traceback" not in r.text
    # ...and the server still answers correctly.
    ok = client.post("/embed", json={"inputs": ["a"]})
    np.testing.assert_allclose(
        ok.json(), expected.embeddings(fake_models[Task.EMBEDDING], ["a"]), atol=1e-6
    )


def test_unknown_fields_are_ignored(embedding_server) -> None:
    client, _ = embedding_server
    r = client.post(
        "/embed", json={"inputs": "a", "options": {"wait_for_model": True}, "model": "x"}
    )
    assert r.status_code == 200


def test_unknown_route_and_method(embedding_server) -> None:
    client, _ = embedding_server
    assert client.get("/nope").json()["error_type"] == "NotFound"
    assert client.get("/embed").status_code == 405


@pytest.mark.parametrize(
    ("failure", "status", "error_type"),
    [
        (errors.Overloaded("Model is overloaded"), 429, "Overloaded"),
        (errors.BackendError("forward pass failed"), 424, "Backend"),
        (errors.TokenizationError("Tokenizer error: x"), 422, "Tokenizer"),
        (RuntimeError("secret internals"), 500, "Backend"),
    ],
)
def test_engine_failures(fake_engine_server, failure, status, error_type) -> None:
    client, engine = fake_engine_server
    engine.fail_next = failure
    r = client.post("/embed", json={"inputs": "a"})
    assert (r.status_code, r.json()["error_type"]) == (status, error_type)
    assert "secret" not in r.text
    assert client.post("/embed", json={"inputs": "a"}).status_code == 200


def test_unhealthy(fake_engine_server) -> None:
    client, engine = fake_engine_server
    engine.healthy = False
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {
        "error": "Model is unhealthy",
        "error_type": "Unhealthy",
    }
    engine.healthy = True
    assert client.get("/health").status_code == 200
