"""--api-key (Bearer, constant time; probes stay open) and CORS."""

from __future__ import annotations

import httpx

from tei_ort.package import Task
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
