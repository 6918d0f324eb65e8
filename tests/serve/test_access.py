"""--api-key (Bearer, constant time; probes stay open) and CORS."""

from __future__ import annotations

import inspect

import httpx

from tei_ort.package import Task
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import OPERATIONS
from tests.serve.conftest import real_engine
from tests.serve.live import context, serve


def test_api_key_and_cors(fake_models) -> None:
    engine = real_engine(fake_models[Task.EMBEDDING])
    with (
        serve(context(engine), api_key="s3cret", origins=("https://app.example",)) as url,
        httpx.Client(base_url=url) as client,
    ):
        denied = client.post("/embed", json={"inputs": "a"})
        assert denied.status_code == 401 and denied.json()["error_type"] == "Unauthorized"
        wrong = client.post(
            "/embed", json={"inputs": "a"}, headers={"authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        ok = client.post("/embed", json={"inputs": "a"}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (
            client.post("/v1/embeddings", json={"input": "a"}).json()["error"]["type"]
            == "authentication_error"
        )
        for path in ("/health", "/", "/ping", "/metrics", "/docs", "/api-doc/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/info").status_code == 401
        pre = client.options(
            "/embed",
            headers={"origin": "https://app.example", "access-control-request-method": "POST"},
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_every_inference_route_needs_the_key(fake_models) -> None:
    engine = real_engine(fake_models[Task.EMBEDDING])
    with (
        serve(context(engine), api_key="s3cret") as url,
        httpx.Client(base_url=url) as client,
    ):
        for operation in OPERATIONS:
            for headers in (
                {},
                {"authorization": "Bearer s3cre"},  # a prefix of the key
                {"authorization": "Bearer s3cretx"},
                {"authorization": "Basic s3cret"},
                {"authorization": "Bearer"},
            ):
                r = client.post(operation.path, json={"inputs": "a"}, headers=headers)
                assert r.status_code == 401, (operation.path, headers)
                body = r.json()
                assert "error" in body, body  # TEI's body, or OpenAI's on its routes
        # Probes and scrapers stay open, and /metrics counted no refused request.
        metrics = client.get("/metrics")
        assert (
            metrics.status_code == 200 and 'te_request_count{method="single"}' not in metrics.text
        )
        good = {"authorization": "bearer s3cret"}  # the scheme is case-insensitive (RFC 7235)
        assert client.post("/embed", json={"inputs": "a"}, headers=good).status_code == 200


def test_compare_is_constant_time() -> None:
    # The comparison is hmac.compare_digest's: its time does not depend on how much of a guess
    # is right (only on the length). Checked by what the policy calls, not by a stopwatch.
    source = inspect.getsource(AccessPolicy.check)
    assert "hmac.compare_digest(token" in source and "token ==" not in source


def test_open_server_needs_no_key(fake_models) -> None:
    engine = real_engine(fake_models[Task.EMBEDDING])
    with serve(context(engine)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
        r = client.get("/health", headers={"origin": "https://any.example"})
        assert r.headers["access-control-allow-origin"] == "*"
