"""The real runtime on a real all-MiniLM-L6-v2 package: the server's vectors equal the runtime's,
the ONNX-folder path reads the model as TEI does, and `tei-serve` starts from the command line
(on the embedded default model, HOSTNAME set to the machine's name) and stops on SIGTERM."""

from __future__ import annotations

import base64
import shutil
import socket
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tei_ort.engine import Engine, EngineConfig
from tei_ort.package import CHECKS_FILE, VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import openvino_bf16
from tei_ort.serve import model_source
from tei_ort.serve.settings import load_settings
from tests.conftest import PACKAGE_CACHE as CACHE
from tests.conftest import export_in_this_process
from tests.serve.fakes import MINILM
from tests.serve.live import context, serve, tei_serve

pytestmark = pytest.mark.slow
TEXTS = ["What is Deep Learning?", "Paris is the capital of France.", "a" * 3000]


@pytest.fixture(scope="module")
def minilm(minilm_package: Path) -> Model:
    return Model.load(minilm_package, RuntimeOptions(provider="cpu", variant="fp32"))


@pytest.fixture(scope="module")
def real_server(minilm: Model) -> Iterator[httpx.Client]:
    engine = Engine(minilm, EngineConfig())
    with serve(context(engine)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_vectors_equal_the_runtime(real_server: httpx.Client, minilm: Model) -> None:
    want = minilm.embed(TEXTS, normalize=True)
    got = real_server.post("/embed", json={"inputs": TEXTS}).json()
    np.testing.assert_allclose(got, want, atol=1e-5)
    body = real_server.post(
        "/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]]
    np.testing.assert_allclose(decoded, want, atol=1e-5)
    assert body["usage"]["total_tokens"] == sum(len(e) for e in minilm.encode(TEXTS))
    short = real_server.post("/embed", json={"inputs": TEXTS[:1], "dimensions": 128}).json()
    np.testing.assert_allclose(
        short, minilm.embed(TEXTS[:1], normalize=True, dimensions=128), atol=1e-5
    )


def test_too_long_without_truncation(real_server: httpx.Client) -> None:
    r = real_server.post("/embed", json={"inputs": "word " * 400, "truncate": False})
    assert r.status_code == 422 and "must have less than 256 tokens" in r.json()["error"]
    assert real_server.post("/embed", json={"inputs": "word " * 400}).status_code == 200


def test_onnx_folder_is_read_as_tei_does(
    tmp_path: Path, minilm_package: Path, minilm: Model
) -> None:
    folder = tmp_path / "repo"
    folder.mkdir()
    for item in MINILM.iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).symlink_to(item)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").symlink_to(minilm_package / "model.onnx")
    settings = load_settings(
        ["--model-id", str(folder), "--huggingface-hub-cache", str(tmp_path / "c")], {}
    )
    resolved = model_source.resolve(settings, "cpu")
    assert resolved.allow_unvalidated
    model = Model.load(resolved.path, RuntimeOptions(provider="cpu", allow_unvalidated=True))
    assert (model.manifest.pooling, model.manifest.normalize, model.manifest.max_input_length) == (
        minilm.manifest.pooling,
        True,
        256,
    )
    np.testing.assert_allclose(model.embed(TEXTS), minilm.embed(TEXTS), atol=1e-6)


def test_plain_model_without_export_extra_says_run_tei_export(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_source, "EXPORT_MODULES", ("no_such_module_for_tests",))
    settings = load_settings(
        ["--model-id", str(MINILM), "--huggingface-hub-cache", str(tmp_path)], {}
    )
    with pytest.raises(Exception, match="tei-export"):
        model_source.resolve(settings, "cpu")


def test_cli_default_model_end_to_end(minilm_package: Path, minilm: Model) -> None:
    env = {
        "HOSTNAME": socket.gethostname(),
        "HUGGINGFACE_HUB_CACHE": str(CACHE),
        "VARIANT": "fp32",
        "MODEL_ID": None,
    }
    with tei_serve(env, module="tei_ort.serve.cli", timeout_s=600) as (url, lines):
        got = httpx.post(f"{url}/embed", json={"inputs": TEXTS[:2]}).json()
        np.testing.assert_allclose(got, minilm.embed(TEXTS[:2], normalize=True), atol=1e-5)
        info = httpx.get(f"{url}/info").json()
        assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert (info["provider"], info["variant"]) == ("cpu", "fp32")
        assert info["isa_class"] == this_cpu().isa_class.value
        assert info["cpu"] == this_cpu().describe()
    output = "\n".join(lines)
    assert "Ready: sentence-transformers/all-MiniLM-L6-v2 (embedded default" in output
    assert f"variant=fp32 cpu={this_cpu().describe()} dims=384" in output


@pytest.mark.skipif(not openvino_bf16(), reason="needs the openvino package and bfloat16")
def test_cli_serves_openvino_bf16_under_auto(
    minilm_export: Any, tmp_path: Path, minilm: Model
) -> None:
    # The validation step's package holds bf16, validated at export on this machine; "auto"
    # picks OpenVINO for it. (Exporting MiniLM again here, fp32 and bf16, made this test 128-138
    # s instead of 16-18 on a loaded 2-core Xeon.) A copy: the server records its checks in the
    # package.
    package = tmp_path / "minilm"
    shutil.copytree(minilm_export.path, package, ignore=shutil.ignore_patterns(CHECKS_FILE))
    env = {
        "MODEL_ID": str(package),
        "HOSTNAME": "127.0.0.1",
        "HUGGINGFACE_HUB_CACHE": str(tmp_path / "cache"),
        "VARIANT": "bf16",
        "PROVIDER": None,
    }
    with tei_serve(env, timeout_s=900) as (url, lines):
        got = np.asarray(httpx.post(f"{url}/embed", json={"inputs": TEXTS}).json())
        want = minilm.embed(TEXTS, normalize=True)
        cosines = np.sum(got * want, axis=1)
        assert np.all(cosines > 0.999) and not np.allclose(got, want, atol=1e-6), cosines
        metrics = httpx.get(f"{url}/metrics").text
        assert 'dtype="bfloat16"' in metrics and 'provider="openvino"' in metrics
        assert 'variant="bf16"' in metrics
    assert "provider=openvino variant=bf16" in "\n".join(lines)


@pytest.mark.parametrize(
    ("flags", "provider", "want"),
    [
        (["--variant", "bf16"], "openvino", (VariantName.FP32, VariantName.BF16)),
        (["--variant", "fp32"], "cpu", (VariantName.FP32,)),
        ([], "openvino", model_source.EXPORT_VARIANTS["openvino"]),
    ],
)
def test_the_on_the_fly_export_builds_fp32_and_the_variant_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    provider: str,
    want: tuple[VariantName, ...],
) -> None:
    """What tei-serve asks the exporter for when it exports the embedded default: fp32 (the
    reference every variant is validated beside) and the variant asked, or the provider's list."""
    from tei_ort.export import pipeline

    asked: list[tuple[VariantName, ...]] = []

    def export_model(model: str, out: Path, options: Any, *args: object, **kwargs: object) -> Any:
        asked.append(options.variants)
        return types.SimpleNamespace(path=out)

    monkeypatch.setattr(pipeline, "export_model", export_model)
    settings = load_settings([*flags, "--huggingface-hub-cache", str(tmp_path)], {})
    with export_in_this_process():  # so that the stand-in above is what runs
        resolved = model_source.resolve(settings, provider)
    assert asked == [want]
    assert resolved.model_id == "sentence-transformers/all-MiniLM-L6-v2"
