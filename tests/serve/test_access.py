"""--api-key (Bearer, constant time; probes stay open) and CORS."""

from __future__ import annotations

import hmac
from types import SimpleNamespace

import httpx
import pytest

from tei_ort.package import Task
from tei_ort.serve import access
from tei_ort.serve.access import AccessPolicy
from tei_ort.serve.app import OPERATIONS
from tei_ort.serve.errors import Unauthorized
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
                # TEI's body, or OpenAI's or Ollama's on theirs ({"error": ...}); Cohere's is
                # {"message": ...}.
                key = "message" if operation.path == "/v2/embed" else "error"
                assert key in body, (operation.path, body)
        # Probes and scrapers stay open, and /metrics counted no refused request.
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and 'te_request_count{method="single"' not in metrics.text
        good = {"authorization": "bearer s3cret"}  # the scheme is case-insensitive (RFC 7235)
        assert client.post("/embed", json={"inputs": "a"}, headers=good).status_code == 200


@pytest.mark.parametrize(
    ("header", "token", "allowed"),
    [
        ("Bearer s3cret", "s3cret", True),
        ("bearer s3cret", "s3cret", True),
        ("s3cret", "s3cret", True),  # llama-index sends the bare key
        ("Bearer s3cre", "s3cre", False),  # a prefix
        ("Bearer s3creT", "s3creT", False),  # all but the last character
        ("Bearer x", "x", False),
        (None, "", False),
    ],
)
def test_every_key_check_is_one_compare_digest(
    monkeypatch: pytest.MonkeyPatch, header: str | None, token: str, allowed: bool
) -> None:
    # Constant time (a stopwatch on a shared machine could not show it): the decision is
    # hmac.compare_digest's on the whole token and the whole key, for every request, whatever
    # the guess shares with the key, and nothing else compares them.
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    request = SimpleNamespace(
        method="POST", path="/embed", headers={} if header is None else {"authorization": header}
    )
    policy = AccessPolicy("s3cret", ())
    if allowed:
        policy.check(request)  # type: ignore[arg-type]
    else:
        with pytest.raises(Unauthorized):
            policy.check(request)  # type: ignore[arg-type]
    assert calls == [(token.encode(), b"s3cret")]


def test_open_server_needs_no_key(fake_models) -> None:
    engine = real_engine(fake_models[Task.EMBEDDING])
    with serve(context(engine)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
        r = client.get("/health", headers={"origin": "https://any.example"})
        assert r.headers["access-control-allow-origin"] == "*"
