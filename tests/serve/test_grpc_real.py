"""tei.v1 on the real all-MiniLM-L6-v2 package (fp32, CPU): gRPC answers equal the HTTP routes'
and the runtime's, and `tei-serve` started with GRPC_PORT and API_KEY serves gRPC beside HTTP."""

from __future__ import annotations

import types
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tei_ort.engine import Engine, EngineConfig
from tei_ort.runtime import Model, RuntimeOptions
from tests.conftest import PACKAGE_CACHE
from tests.serve.live import free_port, tei_serve
from tests.serve.test_grpc import f32, grpc_server, load_stubs, texts

pytestmark = pytest.mark.slow
TEXTS = ["What is Deep Learning?", "Paris is the capital of France.", "a" * 3000]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    return load_stubs(tmp_path_factory.mktemp("tei_stubs_real"))


@pytest.fixture(scope="module")
def minilm(minilm_package: Path) -> Model:
    return Model.load(minilm_package, RuntimeOptions(provider="cpu", variant="fp32"))


def test_grpc_equals_http_and_the_runtime(minilm: Model, stubs: types.SimpleNamespace) -> None:
    pb = stubs.pb
    with grpc_server(Engine(minilm, EngineConfig()), stubs) as served:
        embed = served.stub("Embed")
        for text in TEXTS:
            got = embed.Embed(pb.EmbedRequest(inputs=text, truncate=True))
            http = served.http.post("/embed", json={"inputs": text}).json()[0]
            np.testing.assert_array_equal(f32(got.embeddings), f32(http))
            want = minilm.embed([text], normalize=True)[0]
            np.testing.assert_allclose(got.embeddings, want, atol=1e-5)
            assert got.metadata.compute_tokens == len(minilm.encode([text])[0])
        short = embed.Embed(pb.EmbedRequest(inputs=TEXTS[0], dimensions=128))
        np.testing.assert_allclose(
            short.embeddings, minilm.embed(TEXTS[:1], normalize=True, dimensions=128)[0], atol=1e-5
        )
        inputs = texts(1000, "a sentence about")
        streamed = list(embed.EmbedStream(pb.EmbedRequest(inputs=t) for t in inputs))
        # Batched differently from HTTP's one request (other padding): equal to float32 rounding.
        want_all = minilm.embed(inputs, normalize=True)
        np.testing.assert_allclose(f32([a.embeddings for a in streamed]), want_all, atol=1e-5)
        tokens = served.stub("Tokenize").Tokenize(
            pb.EncodeRequest(inputs=TEXTS[0], add_special_tokens=True)
        )
        http_tokens = served.http.post("/tokenize", json={"inputs": TEXTS[0]}).json()[0]
        assert [(t.id, t.text) for t in tokens.tokens] == [
            (t["id"], t["text"]) for t in http_tokens
        ]
        info = served.stub("Info").Info(pb.InfoRequest())
        assert (info.max_input_length, info.model_type) == (256, pb.MODEL_TYPE_EMBEDDING)


def test_cli_serves_grpc_with_the_api_key(
    minilm_package: Path, minilm: Model, stubs: types.SimpleNamespace
) -> None:
    port = free_port()
    env = {
        "HOSTNAME": "127.0.0.1",
        "MODEL_ID": str(minilm_package),
        "HUGGINGFACE_HUB_CACHE": str(PACKAGE_CACHE),
        "PROVIDER": "cpu",
        "VARIANT": "fp32",
        "GRPC_PORT": str(port),
        "API_KEY": "s3cret",
    }
    key = (("authorization", "Bearer s3cret"),)
    with (
        tei_serve(env, timeout_s=120) as (url, lines),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        embed = stubs.rpc.EmbedStub(channel)
        got = embed.Embed(stubs.pb.EmbedRequest(inputs=TEXTS[0]), metadata=key)
        http = httpx.post(
            f"{url}/embed", json={"inputs": TEXTS[0]}, headers={"authorization": "Bearer s3cret"}
        )
        np.testing.assert_array_equal(f32(got.embeddings), f32(http.json()[0]))
        np.testing.assert_allclose(
            got.embeddings, minilm.embed(TEXTS[:1], normalize=True)[0], atol=1e-5
        )
        with pytest.raises(grpc.RpcError) as denied:
            embed.Embed(stubs.pb.EmbedRequest(inputs=TEXTS[0]))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service="tei.v1.Embed"))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert f"gRPC (tei.v1) listening on 127.0.0.1:{port}" in "\n".join(lines)
