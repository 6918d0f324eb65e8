"""More of `tei-serve --help`'s flags, end to end: `load_settings([...])` -> `cli.build` -> a real
server on a loopback socket, on the tiny hand-built package of tests/runtime/conftest.py. Each
flag is shown by what a client gets back (or what a collector receives), not by the parsed
Settings: --served-model-name, --max-client-batch-size, --payload-limit, --api-key,
--cors-allow-origin, the engine limits /info reports from the running engine
(--max-concurrent-requests, --max-batch-tokens, --max-batch-requests, --tokenization-workers),
--otlp-endpoint / --otlp-service-name, --prometheus-port, --pooling, --dtype and --dense-path.
tests/serve/test_flags_take_effect.py, test_hub_onnx_download.py (--revision, --hf-token) and
test_logs.py (--json-output, --hostname, --port, LOG_LEVEL) have the others."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tei_ort.errors import TeiOrtError
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.serve.cli import build
from tei_ort.serve.settings import load_settings
from tests.runtime.conftest import make_package  # noqa: F401  (the fixture, used by name)
from tests.serve import live
from tests.serve.test_tracing import Receiver

MakePackage = Callable[..., Path]
KEY = "k-123"
AUTH = {"authorization": f"Bearer {KEY}"}


def _args(package: Path, cache: Path, *extra: str) -> list[str]:
    base = ["--model-id", str(package), "--huggingface-hub-cache", str(cache)]
    return [*base, "--prometheus-port", "0", "--provider", "cpu", "--variant", "fp32", *extra]


def _vectors(package: Path, texts: list[str]) -> np.ndarray:
    model = Model.load(package, RuntimeOptions(provider="cpu", variant="fp32"))
    return model.embed(texts, normalize=True)


def test_serving_flags_reach_clients(make_package: MakePackage, tmp_path: Path) -> None:  # noqa: F811
    package = make_package()
    flags = [
        "--served-model-name",
        "my-name",
        "--max-client-batch-size",
        "2",
        "--payload-limit",
        "2000",
        "--api-key",
        KEY,
        "--cors-allow-origin",
        "https://a.example",
        "--max-concurrent-requests",
        "7",
        "--max-batch-tokens",
        "1024",
        "--max-batch-requests",
        "3",
        "--tokenization-workers",
        "1",
    ]
    app = build(load_settings(_args(package, tmp_path / "hub", *flags), {}))
    with live.serve_app(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/info", headers=AUTH).json()
        models = client.get("/v1/models", headers=AUTH).json()
        openai = client.post("/v1/embeddings", json={"input": ["a", "b"]}, headers=AUTH)
        two = client.post("/embed", json={"inputs": ["a", "b"]}, headers=AUTH)
        three = client.post("/embed", json={"inputs": ["a", "b", "c"]}, headers=AUTH)
        big = client.post("/embed", json={"inputs": "word " * 500}, headers=AUTH)
        no_key = client.post("/embed", json={"inputs": "a"})
        allowed = client.options(
            "/embed",
            headers={"origin": "https://a.example", "access-control-request-method": "POST"},
        )
        other = client.get("/health", headers={"origin": "https://b.example"})
    want = _vectors(package, ["a", "b"])
    # --served-model-name: /info, /v1/models and OpenAI's `model`.
    assert info["served_model_name"] == "my-name"
    assert [m["id"] for m in models["data"]] == ["my-name"]
    assert openai.json()["model"] == "my-name"
    np.testing.assert_allclose([d["embedding"] for d in openai.json()["data"]], want, atol=1e-5)
    # --max-client-batch-size 2: two inputs pass, three are refused in TEI's shape.
    np.testing.assert_allclose(two.json(), want, atol=1e-5)
    assert three.status_code == 422
    assert three.json() == {
        "error": "batch size 3 > maximum allowed batch size 2",
        "error_type": "Validation",
    }
    # --payload-limit 2000: a 2.5 kB body is refused before it is parsed.
    assert big.status_code == 413 and big.json()["error_type"] == "Validation"
    # --api-key: required; the right key was accepted above.
    assert no_key.status_code == 401 and no_key.json()["error_type"] == "Unauthorized"
    # --cors-allow-origin: that origin only.
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    assert "access-control-allow-origin" not in other.headers
    # The engine limits, as /info reads them from the running engine's configuration.
    assert [info[k] for k in ("max_concurrent_requests", "max_batch_tokens")] == [7, 1024]
    assert [info[k] for k in ("max_batch_requests", "tokenization_workers")] == [3, 1]
    assert info["max_client_batch_size"] == 2


def test_otlp_flags_send_spans_to_the_collector(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    try:
        flags = ["--otlp-endpoint", receiver.url, "--otlp-service-name", "my-tei"]
        app = build(load_settings(_args(make_package(), tmp_path / "hub", *flags), {}))
        with live.serve_app(app) as url:
            r = httpx.post(f"{url}/embed", json={"inputs": "hello"}, timeout=60)
            assert r.status_code == 200
        # Stopping the server flushes the exporter: the spans are at the collector by now.
        names = {(s.service, s.name) for s in receiver.spans}
    finally:
        receiver.server.shutdown()
    assert ("my-tei", "POST /embed") in names, names
    assert {("my-tei", n) for n in ("tokenization", "queue", "inference")} <= names, names
    assert set(receiver.paths) == {"/v1/traces"}


def test_prometheus_port_serves_metrics(make_package: MakePackage, tmp_path: Path) -> None:  # noqa: F811
    port = live.free_port()
    args = _args(make_package(), tmp_path / "hub")
    args[args.index("--prometheus-port") + 1] = str(port)
    app = build(load_settings(args, {}))
    with live.serve_app(app) as url:
        assert (
            httpx.post(f"{url}/embed", json={"inputs": ["a", "b"]}, timeout=60).status_code == 200
        )
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60)
        served = httpx.get(f"{url}/info", timeout=60).json()["served_model_name"]
    assert scraped.status_code == 200
    assert f'te_request_count{{method="batch",model="{served}"}} 1.0' in scraped.text
    assert f'te_request_success{{method="batch",model="{served}"}} 1.0' in scraped.text


def test_pooling_flag_overrides_the_package(make_package: MakePackage, tmp_path: Path) -> None:  # noqa: F811
    package = make_package()  # mean pooling in its manifest
    texts = ["hello world", "a longer sentence than that"]
    served: dict[str, np.ndarray] = {}
    for pooling in ("cls", "mean"):
        args = _args(package, tmp_path / f"hub-{pooling}", "--pooling", pooling)
        with live.serve_app(build(load_settings(args, {}))) as url:
            served[pooling] = np.asarray(
                httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=60).json()
            )
            tokens = httpx.post(f"{url}/embed_all", json={"inputs": texts}, timeout=60).json()
    # From the token states the same server returns: CLS is the first token's, mean their mean.
    states = [np.asarray(t, dtype=np.float32) for t in tokens]  # each (tokens, hidden)
    first = np.stack([s[0] for s in states])
    mean = np.stack([s.mean(axis=0) for s in states])
    np.testing.assert_allclose(
        served["cls"], first / np.linalg.norm(first, axis=1, keepdims=True), atol=1e-5
    )
    np.testing.assert_allclose(
        served["mean"], mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5
    )
    assert not np.allclose(served["cls"], served["mean"], atol=1e-3)  # the flag changed them


def test_dtype_picks_the_variant_and_dense_path_is_ignored(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    package = make_package()  # fp32 only
    args = _args(package, tmp_path / "hub", "--dtype", "float32", "--dense-path", "2_Dense")
    args = [a for a in args if a not in ("--variant", "fp32")]  # TEI's --dtype alone
    with caplog.at_level(logging.WARNING, logger="tei_ort.serve"):
        app = build(load_settings(args, {}))
    assert "--dense-path ignored: the package carries its Dense layers" in caplog.text
    with live.serve_app(app) as url:
        info = httpx.get(f"{url}/info", timeout=60).json()
        got = httpx.post(f"{url}/embed", json={"inputs": ["a", "b"]}, timeout=60).json()
    assert (info["variant"], info["model_dtype"]) == ("fp32", "float32")
    np.testing.assert_allclose(got, _vectors(package, ["a", "b"]), atol=1e-5)
    # float16 asks for the fp16 variant, which this package does not have: refused, by name.
    fp16 = [*args[: args.index("--dtype") + 1], "float16"]
    with pytest.raises(TeiOrtError, match="fp16"):
        build(load_settings(fp16, {}))


def test_teis_other_flags_are_accepted_and_say_what_they_do_here(
    make_package: MakePackage,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TEI command line with --uds-path, --disable-spans and the deprecated --hf-api-token
    starts and serves; the unused socket and the deprecated alias are logged, the token never."""
    package = make_package()
    token = "hf_aliasTokenNeverLogged4321"
    args = _args(package, tmp_path / "hub", "--uds-path", "/tmp/tei-server", "--disable-spans")
    settings = load_settings([*args, "--hf-api-token", token], {})
    assert (settings.hf_token, settings.uds_path, settings.disable_spans) == (
        token,
        "/tmp/tei-server",
        True,
    )
    with caplog.at_level(logging.INFO, logger="tei_ort.serve"):
        app = build(settings)
    assert "--hf-api-token (HF_API_TOKEN) is deprecated: use --hf-token (HF_TOKEN)" in caplog.text
    assert "--uds-path unused: it is TEI's Python-backend socket; tei_ort has none" in caplog.text
    assert token not in caplog.text
    with live.serve_app(app) as url:
        got = httpx.post(f"{url}/embed", json={"inputs": ["a"]}, timeout=60).json()
    np.testing.assert_allclose(got, _vectors(package, ["a"]), atol=1e-5)
