"""Bad input never breaks the server: property-based requests to every route of our own OpenAPI
document (schemathesis: bodies that fit the schemas and bodies that break them), then hand-written
hostile bodies (deep nesting, huge numbers, wrong types, invalid UTF-8, 10 MB). Zero 5xx, every
error in a JSON body, and the server healthy and correct afterwards. Real engine, fake model."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tei_ort.package import Task
from tests.serve import expected
from tests.serve.conftest import real_engine
from tests.serve.fakes import FakeModel
from tests.serve.live import context, serve

# Per route and mode (~400 requests per model, ~6 s); FUZZ_EXAMPLES=200 for a deeper run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
TEI_PAYLOAD_LIMIT = 2_000_000


@pytest.fixture(scope="module", params=[Task.EMBEDDING, Task.RERANKER])
def live(request: pytest.FixtureRequest, fake_models: dict[Task, FakeModel]) -> Iterator[str]:
    engine = real_engine(fake_models[request.param])
    with serve(context(engine), payload_limit=TEI_PAYLOAD_LIMIT) as url:
        yield url


def _check(response: httpx.Response | object) -> None:
    status = getattr(response, "status_code")  # noqa: B009  # httpx or requests response
    text = getattr(response, "text")  # noqa: B009
    assert status < 500, text
    if status >= 400:
        body = getattr(response, "json")()  # noqa: B009
        assert "error" in body or "message" in body, text  # Cohere's routes answer {"message"}
        assert "Traceback" not in text


def test_every_route_from_the_openapi_document(live: str) -> None:
    schema = schemathesis.openapi.from_dict(httpx.get(f"{live}/api-doc/openapi.json").json())
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests on every run: a failure reproduces
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                response = case.call(base_url=live, timeout=30)
                statuses.setdefault(case.path, set()).add(response.status_code)
                _check(response)

            try:
                call()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # a GET without parameters cannot be wrong
    assert len(statuses) >= 20 and any(200 in s for s in statuses.values())
    with httpx.Client(base_url=live) as client:
        assert client.get("/health").status_code == 200


DEEP = 5000
HOSTILE: list[tuple[str, bytes]] = [
    ("/embed", b'{"inputs": ' + b"[" * DEEP + b"]" * DEEP + b"}"),  # past the parser's depth
    ("/embed", b'{"inputs": ' + b"[" * 500 + b'"a"' + b"]" * 500 + b"}"),  # within it
    ("/embed", b'{"inputs": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}"),
    ("/embed", b'{"inputs": "a", "dimensions": 1e308}'),
    ("/embed", b'{"inputs": "a", "dimensions": 1e400}'),
    ("/embed", b'{"inputs": "a", "dimensions": 100000000000000000000000000000000000000000}'),
    ("/embed", b'{"inputs": [18446744073709551616]}'),
    ("/embed", b'{"inputs": [4294967295, 30522, 999999]}'),
    ("/embed", b'{"inputs": [-1]}'),
    ("/embed", b'{"inputs": NaN}'),
    ("/embed", b'{"inputs": "a", "normalize": Infinity}'),
    ("/rerank", b'{"query": "q", "texts": ["a"], "top_n": 1e300}'),
    ("/decode", b'{"ids": [[1e10]]}'),
    ("/embed", b'{"inputs": null}'),
    ("/embed", b'{"inputs": true}'),
    ("/embed", b'{"inputs": {"a": 1}}'),
    ("/embed", b'"inputs"'),
    ("/embed", b"[]"),
    ("/embed", b"null"),
    ("/embed", b""),
    ("/rerank", b'{"query": 1, "texts": "a"}'),
    ("/predict", b'{"inputs": [["a", "b", "c"]]}'),
    ("/similarity", b'{"inputs": {"source_sentence": [], "sentences": {}}}'),
    ("/vertex", b'{"instances": [1, "a", null, []]}'),
    ("/v1/embeddings", b'{"input": [[1, "a"]], "encoding_format": "hex"}'),
    ("/embed", b'{"inputs": "\xff\xfe\xfd"}'),  # invalid UTF-8
    ("/embed", b'{"inputs": "\xc0\xaf"}'),  # an overlong encoding
    ("/embed", b'{"inputs": "\\ud800"}'),  # a lone surrogate
    ("/embed", b'{"inputs": "a\\u0000b"}'),  # NUL is valid JSON and a valid text
    ("/tokenize", b'{"inputs": "\\u202e\\u0301\\ufeff\xf0\x9f\x98\x80"}'),
    ("/embed", b'{"inputs": "' + b"x" * 1_900_000 + b'"}'),  # just under the limit: truncated
    ("/embed", b'{"inputs": "' + "é".encode() * 900_000 + b'", "truncate": false}'),
    ("/embed", b'{"inputs": "' + b"a " * (10_000_000 // 2) + b'"}'),  # 10 MB
]


@pytest.mark.parametrize(("path", "body"), HOSTILE, ids=lambda v: str(v)[:40])
def test_hostile_bodies(embedding_fuzz: httpx.Client, path: str, body: bytes) -> None:
    response = embedding_fuzz.post(path, content=body, headers={"content-type": "application/json"})
    _check(response)
    if len(body) > TEI_PAYLOAD_LIMIT:
        assert response.status_code == 413


def test_ten_megabytes_without_content_length(embedding_fuzz: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": "'
        for _ in range(160):
            yield b"a" * 65536
        yield b'"}'

    response = embedding_fuzz.post("/embed", content=chunks())  # chunked transfer encoding
    assert response.status_code == 413


@pytest.fixture(scope="module")
def embedding_fuzz(fake_models: dict[Task, FakeModel]) -> Iterator[httpx.Client]:
    engine = real_engine(fake_models[Task.EMBEDDING])
    with (
        serve(context(engine), payload_limit=TEI_PAYLOAD_LIMIT) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client
        # Healthy and correct after everything above.
        assert client.get("/health").status_code == 200
        answer = client.post("/embed", json={"inputs": ["after"]}).json()
        np.testing.assert_allclose(
            answer, expected.embeddings(fake_models[Task.EMBEDDING], ["after"]), atol=1e-6
        )
