"""OpenAI embeddings with the official `openai` client (its default base64, and explicit float)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tei_ort.package import Task
from tests.serve import expected

TEXTS = ["hello world", "What is Deep Learning?"]


@pytest.fixture()
def client(embedding_server) -> Iterator[openai.OpenAI]:
    http, _ = embedding_server
    base_url = f"{str(http.base_url).rstrip('/')}/v1"
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        yield client


def test_default_base64(client, fake_models) -> None:
    result = client.embeddings.create(model="fake-model", input=TEXTS)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(
        got, expected.embeddings(fake_models[Task.EMBEDDING], TEXTS), atol=1e-6
    )
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "fake-model"
    tokens = sum(len(e) for e in fake_models[Task.EMBEDDING].encode(TEXTS))
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (tokens, tokens)


def test_float_and_dimensions(client, fake_models) -> None:
    result = client.embeddings.create(
        model="m", input="hello world", encoding_format="float", dimensions=4
    )
    want = expected.embeddings(fake_models[Task.EMBEDDING], ["hello world"], dimensions=4)
    np.testing.assert_allclose([result.data[0].embedding], want, atol=1e-6)


def test_token_id_inputs(client, fake_models) -> None:
    ids = [t.id for t in fake_models[Task.EMBEDDING].tokenizer.tokenize("hello world")]
    one = client.embeddings.create(model="m", input=ids, encoding_format="float")
    many = client.embeddings.create(model="m", input=[ids, ids], encoding_format="float")
    by_text = client.embeddings.create(model="m", input="hello world", encoding_format="float")
    want = expected.embeddings(fake_models[Task.EMBEDDING], ["hello world"])
    np.testing.assert_allclose([by_text.data[0].embedding], want, atol=1e-6)
    np.testing.assert_allclose([one.data[0].embedding], want, atol=1e-6)
    np.testing.assert_allclose([d.embedding for d in many.data], [want[0], want[0]], atol=1e-6)
    assert [d.index for d in many.data] == [0, 1]


def test_base64_is_little_endian_float32(embedding_server, fake_models) -> None:
    http, _ = embedding_server
    body = http.post(
        "/embeddings", json={"input": "hello world", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    np.testing.assert_allclose(
        np.frombuffer(raw, dtype="<f4"),
        expected.embeddings(fake_models[Task.EMBEDDING], ["hello world"])[0],
        atol=1e-6,
    )


def test_errors_use_openai_body(client, embedding_server) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="m", input=[])
    assert bad.value.status_code == 400
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.embeddings.create(model="m", input="a", dimensions=0)
    assert invalid.value.type == "invalid_request_error"
    http, _ = embedding_server
    body = http.post("/v1/embeddings", content=b"{oops").json()
    assert (
        set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == 400
    )
    assert client.embeddings.create(model="m", input="ok").data


def test_models(client) -> None:
    assert [m.id for m in client.models.list()] == ["fake-model"]
