from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tei_ort.errors import ProviderUnavailable
from tei_ort.runtime import providers
from tei_ort.runtime.providers import Provider
from tei_ort.runtime.session import GraphSession, SessionOptions


def test_cpu_is_always_available() -> None:
    assert Provider.CPU in providers.available()
    assert providers.resolve("cpu") is Provider.CPU
    assert providers.resolve("CPU") is Provider.CPU


def test_auto_picks_cuda_only_when_a_gpu_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    monkeypatch.setattr(providers, "openvino_bf16", lambda: False)
    assert providers.resolve("auto") is Provider.CPU


def test_explicit_cuda_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    with pytest.raises(ProviderUnavailable, match="'cuda' is not available here"):
        providers.resolve("cuda")


def test_unknown_provider_lists_choices() -> None:
    with pytest.raises(ProviderUnavailable, match="auto, cpu, cuda"):
        providers.resolve("tpu")


def test_cuda_provider_keeps_cpu_fallback_for_unsupported_nodes() -> None:
    assert providers.ort_providers(Provider.CUDA, 1) == [
        ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0}),
        "CPUExecutionProvider",
    ]


@pytest.mark.skipif(Provider.CUDA in providers.available(), reason="this machine has CUDA")
def test_a_cuda_session_that_ort_put_on_the_cpu_is_an_error(tmp_path: Path) -> None:
    # onnxruntime-gpu without the CUDA libraries logs one line and runs on the CPU; we refuse.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "g.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path
    )
    with pytest.raises(ProviderUnavailable, match="CUDAExecutionProvider could not be created"):
        GraphSession(path, Provider.CUDA, "y", SessionOptions())
    assert GraphSession(path, Provider.CPU, "y", SessionOptions()).provider is Provider.CPU


def test_no_cuda_runtime_means_no_cuda_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "_load_cudart", lambda: None)
    assert providers._cuda_device_count() == 0
    assert Provider.CUDA not in providers.available()
