"""Embedding types on every route that has them: TEI's /embed (`embedding_type`), OpenAI's
embeddings (`embedding_type`, with `encoding_format` float or base64) and Cohere's /v2/embed (with
the official `cohere` client). Every quantized value is checked against sentence-transformers'
quantize_embeddings given the same calibration vectors; errors come in each API's shape."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import ollama
import pytest
from cohere.core.api_error import ApiError

from tei_ort.export import corpus
from tei_ort.package import CHECKS_FILE, Task
from tei_ort.runtime import outputs
from tei_ort.runtime.quantized_embeddings import EmbeddingRanges, read_ranges
from tests.serve import expected, live
from tests.serve.conftest import real_engine
from tests.serve.fakes import FakeModel
from tests.serve.live import context, serve

quantization = pytest.importorskip("sentence_transformers.util.quantization")

TEXTS = ["hello world", "What is Deep Learning?", "Paris is the capital of France."]
QUANTIZED = ("int8", "uint8", "binary", "ubinary")
DTYPES = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


@pytest.fixture(scope="module")
def calibration(fake_models: dict[Task, FakeModel]) -> np.ndarray:
    """The fake model's unnormalized vectors for the export's kind of calibration text."""
    model = fake_models[Task.EMBEDDING]
    texts = corpus.queries(64) + corpus.passages(64) + TEXTS
    return model.forward(model.encode(texts))  # (131, 8)


@pytest.fixture(scope="module")
def server(fake_models: dict[Task, FakeModel], calibration: np.ndarray) -> Iterator[httpx.Client]:
    ranges = EmbeddingRanges.calibrate(calibration)
    engine = real_engine(fake_models[Task.EMBEDDING])
    with (
        serve(context(engine, embedding_ranges=ranges)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def uncalibrated(fake_models: dict[Task, FakeModel]) -> Iterator[httpx.Client]:
    with (
        serve(context(real_engine(fake_models[Task.EMBEDDING]))) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def _st(vectors: np.ndarray, precision: str, calibration: np.ndarray) -> np.ndarray:
    return quantization.quantize_embeddings(vectors, precision, calibration_embeddings=calibration)


def _floats(client: httpx.Client, **body: object) -> np.ndarray:
    got = client.post("/embed", json={"inputs": TEXTS, **body})
    assert got.status_code == 200, got.text
    return np.asarray(got.json(), dtype=np.float32)


@pytest.mark.parametrize("precision", QUANTIZED)
def test_embed_equals_sentence_transformers(
    server: httpx.Client, fake_models, calibration: np.ndarray, precision: str
) -> None:
    floats = _floats(server)
    np.testing.assert_allclose(
        floats, expected.embeddings(fake_models[Task.EMBEDDING], TEXTS), atol=1e-6
    )
    got = server.post("/embed", json={"inputs": TEXTS, "embedding_type": precision}).json()
    want = _st(floats, precision, outputs.normalize(calibration))
    np.testing.assert_array_equal(np.asarray(got, dtype=DTYPES[precision]), want)
    assert len(got[0]) == (8 if precision.endswith("int8") else 1)


def test_embed_unnormalized_uses_the_raw_ranges(server: httpx.Client, calibration) -> None:
    for dimensions in (None, 5):
        options = {"normalize": False, "dimensions": dimensions}
        floats = _floats(server, **options)
        got = server.post("/embed", json={"inputs": TEXTS, "embedding_type": "int8", **options})
        size = dimensions or 8
        want = _st(floats, "int8", calibration[:, :size])
        np.testing.assert_array_equal(np.asarray(got.json(), dtype=np.int8), want)


def test_embed_uncalibrated_prefix_is_422(server: httpx.Client) -> None:
    # The fake's 8 dimensions are calibrated whole; a normalized prefix of 5 is not.
    got = server.post("/embed", json={"inputs": TEXTS, "embedding_type": "uint8", "dimensions": 5})
    assert got.status_code == 422
    assert "dimensions=5 needs ranges calibrated" in got.json()["error"]
    binary = server.post(
        "/embed", json={"inputs": TEXTS, "embedding_type": "ubinary", "dimensions": 5}
    )
    want = quantization.quantize_embeddings(_floats(server, dimensions=5), "ubinary")
    np.testing.assert_array_equal(np.asarray(binary.json(), dtype=np.uint8), want)


def test_unknown_type_is_422(server: httpx.Client) -> None:
    got = server.post("/embed", json={"inputs": TEXTS, "embedding_type": "int4"})
    assert got.status_code == 422 and "embedding_type" in got.json()["error"]


def test_openai_types_as_numbers_and_base64(server: httpx.Client, calibration) -> None:
    floats = _floats(server)
    for precision in QUANTIZED:
        want = _st(floats, precision, outputs.normalize(calibration))
        body = {"input": TEXTS, "model": "m", "embedding_type": precision}
        numbers = server.post("/v1/embeddings", json=body).json()["data"]
        np.testing.assert_array_equal([d["embedding"] for d in numbers], want)
        encoded = server.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
        decoded = [
            np.frombuffer(base64.b64decode(d["embedding"]), want.dtype)
            for d in encoded.json()["data"]
        ]
        np.testing.assert_array_equal(decoded, want)
    plain = server.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"})
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in plain.json()["data"]]
    np.testing.assert_array_equal(decoded, floats)


def test_without_ranges_int8_is_424_in_each_apis_shape(uncalibrated: httpx.Client) -> None:
    tei = uncalibrated.post("/embed", json={"inputs": TEXTS, "embedding_type": "int8"})
    assert tei.status_code == 424
    assert tei.json()["error_type"] == "Backend" and "re-export" in tei.json()["error"]
    oai = uncalibrated.post("/v1/embeddings", json={"input": TEXTS, "embedding_type": "uint8"})
    assert oai.status_code == 424 and "embedding_ranges.npz" in oai.json()["error"]["message"]
    co = uncalibrated.post("/v2/embed", json={"texts": TEXTS, "embedding_types": ["float", "int8"]})
    assert co.status_code == 424 and "re-export" in co.json()["message"]
    # Sign bits need no calibration.
    bits = uncalibrated.post("/embed", json={"inputs": TEXTS, "embedding_type": "binary"})
    assert bits.status_code == 200 and len(bits.json()[0]) == 1


# -- Cohere /v2/embed, through the official client ------------------------------------------


@pytest.fixture(scope="module")
def co(server: httpx.Client) -> Iterator[cohere.ClientV2]:
    client = cohere.ClientV2(api_key="unused", base_url=str(server.base_url).rstrip("/"))
    yield client


def test_cohere_every_type(co: cohere.ClientV2, server: httpx.Client, calibration) -> None:
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    result = co.embed(texts=TEXTS, model="m", input_type="search_query", embedding_types=types)
    # search_query -> the model's "query" prompt.
    floats = _floats(server, prompt_name="query")
    assert not np.allclose(floats, _floats(server))  # the prompt changes the vectors
    np.testing.assert_array_equal(np.asarray(result.embeddings.float_, np.float32), floats)
    unit = outputs.normalize(calibration)
    for precision in QUANTIZED:
        got = np.asarray(getattr(result.embeddings, precision))
        np.testing.assert_array_equal(got, _st(floats, precision, unit))
    decoded = [np.frombuffer(base64.b64decode(row), "<f4") for row in result.embeddings.base64]
    np.testing.assert_array_equal(decoded, floats)
    assert result.texts == TEXTS and result.response_type == "embeddings_by_type"
    tokens = server.post("/embed", json={"inputs": TEXTS, "prompt_name": "query"})
    assert result.meta.billed_units.input_tokens == int(tokens.headers["x-compute-tokens"])
    assert result.meta.api_version.version == "2"


@pytest.mark.parametrize(
    ("input_type", "prompt_name"),
    [("search_document", "passage"), ("classification", None), ("clustering", None)],
)
def test_cohere_input_type_maps_to_prompts(
    co: cohere.ClientV2, server: httpx.Client, input_type: str, prompt_name: str | None
) -> None:
    result = co.embed(texts=TEXTS, model="m", input_type=input_type, embedding_types=["float"])
    want = _floats(server, prompt_name=prompt_name)
    np.testing.assert_array_equal(np.asarray(result.embeddings.float_, np.float32), want)


def test_cohere_output_dimension_and_truncate(co: cohere.ClientV2, server: httpx.Client) -> None:
    short = co.embed(
        texts=TEXTS,
        model="m",
        input_type="clustering",
        embedding_types=["float"],
        output_dimension=4,
    )
    np.testing.assert_array_equal(
        np.asarray(short.embeddings.float_, np.float32), _floats(server, dimensions=4)
    )
    long_text = [" ".join(f"w{i}" for i in range(40))]
    for truncate, direction in (("START", "left"), ("END", "right")):
        got = co.embed(
            texts=long_text,
            model="m",
            input_type="clustering",
            embedding_types=["float"],
            truncate=truncate,
        )
        want = server.post(
            "/embed",
            json={"inputs": long_text, "truncate": True, "truncation_direction": direction},
        )
        np.testing.assert_array_equal(
            np.asarray(got.embeddings.float_, np.float32), np.asarray(want.json(), np.float32)
        )
    start, end = (
        co.embed(
            texts=long_text,
            model="m",
            input_type="clustering",
            embedding_types=["float"],
            truncate=t,
        )
        for t in ("START", "END")
    )
    assert not np.allclose(start.embeddings.float_, end.embeddings.float_)
    with pytest.raises(ApiError) as failure:
        co.embed(
            texts=long_text,
            model="m",
            input_type="clustering",
            embedding_types=["float"],
            truncate="NONE",
        )
    assert failure.value.status_code == 422
    assert "must have less than 16 tokens" in failure.value.body["message"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"texts": TEXTS, "input_type": "image"}, 422, "only `texts`"),
        ({"images": ["data:image/png;base64,AAAA"]}, 422, "only `texts`"),
        ({"input_type": "search_query"}, 422, "`texts` is required"),
        ({"texts": []}, 400, "cannot be empty"),
        ({"texts": TEXTS, "embedding_types": ["int4"]}, 422, "embedding_types"),
        ({"texts": TEXTS, "embedding_types": []}, 422, "embedding_types"),
        ({"texts": TEXTS, "truncate": "MIDDLE"}, 422, "truncate"),
        ({"texts": TEXTS, "max_tokens": 8}, 422, "max_tokens below"),
        ({"texts": TEXTS, "output_dimension": 9}, 422, "dimension"),
    ],
)
def test_cohere_bad_requests(server: httpx.Client, body: dict, status: int, words: str) -> None:
    got = server.post("/v2/embed", json=body)
    assert got.status_code == status, got.text
    assert list(got.json()) == ["message"] and words in got.json()["message"]


def test_cohere_accepts_lowercase_truncate_and_enough_max_tokens(server: httpx.Client) -> None:
    body = {
        "texts": TEXTS,
        "truncate": "end",
        "max_tokens": 16,
        "embedding_types": ["int8", "int8"],
    }
    got = server.post("/v2/embed", json=body).json()
    assert list(got["embeddings"]) == ["int8"] and len(got["embeddings"]["int8"]) == 3


def test_openapi_documents_the_new_routes(server: httpx.Client) -> None:
    document = server.get("/api-doc/openapi.json").json()
    cohere_op = document["paths"]["/v2/embed"]["post"]
    error = cohere_op["responses"]["422"]["content"]["application/json"]["schema"]
    assert error["required"] == ["message"]
    schema_ref = cohere_op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]["properties"]
    assert {"texts", "input_type", "embedding_types", "output_dimension", "truncate"} <= set(fields)
    embed_ref = document["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    embed_fields = document["components"]["schemas"][embed_ref["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "embedding_type" in embed_fields["properties"]


# -- tei-serve on the real all-MiniLM-L6-v2 package ------------------------------------------


@pytest.mark.slow
def test_tei_serve_on_the_real_package(minilm_export: Any, tmp_path: Path) -> None:
    """The ranges the export calibrated, read by tei-serve at start-up: Cohere's int8 and the
    /embed uint8 equal sentence-transformers given those ranges; Ollama's client gets the same
    float vectors."""
    package = tmp_path / "minilm"
    shutil.copytree(minilm_export.path, package, ignore=shutil.ignore_patterns(CHECKS_FILE))
    ranges = read_ranges(package)
    assert ranges is not None
    unit = ranges.for_vectors(384, normalized=True)
    env = {
        "MODEL_ID": str(package),
        "HOSTNAME": "127.0.0.1",
        "HUGGINGFACE_HUB_CACHE": str(tmp_path / "cache"),
        "VARIANT": "fp32",
        "PROVIDER": "cpu",
    }
    with live.tei_serve(env) as (url, _):
        co = cohere.ClientV2(api_key="unused", base_url=url)
        result = co.embed(
            texts=TEXTS, model="m", input_type="search_document", embedding_types=["float", "int8"]
        )
        floats = np.asarray(result.embeddings.float_, dtype=np.float32)  # (3, 384)
        want = quantization.quantize_embeddings(floats, "int8", ranges=unit)
        np.testing.assert_array_equal(result.embeddings.int8, want)
        assert len(np.unique(want)) > 100  # spread over the buckets, not clipped to the ends
        uint8 = httpx.post(f"{url}/embed", json={"inputs": TEXTS, "embedding_type": "uint8"})
        np.testing.assert_array_equal(
            uint8.json(), quantization.quantize_embeddings(floats, "uint8", ranges=unit)
        )
        local = ollama.Client(host=url).embed(model="all-minilm", input=TEXTS)
        np.testing.assert_allclose(local.embeddings, floats, atol=1e-6)
