from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tei_ort.errors import ProviderUnavailable
from tei_ort.runtime import providers
from tei_ort.runtime.cpu import CpuInfo, IsaClass
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


def _cpu(isa_class: IsaClass, arch: str = "x86_64") -> CpuInfo:
    return CpuInfo(arch, "a CPU", frozenset(), isa_class, 2)


@pytest.mark.parametrize(
    ("provider", "isa_class", "expected"),
    [
        # Measured on an AMD EPYC Zen 3: 10% ran faster than 25% (padding-cap-study.txt).
        (Provider.CPU, IsaClass.X86_AVX2, 0.1),
        # Every other class keeps the provider's cap, set on an AMX Xeon.
        (Provider.CPU, IsaClass.X86_AMX, 0.25),
        (Provider.CPU, IsaClass.X86_AVX512_VNNI, 0.25),
        (Provider.CPU, IsaClass.UNKNOWN, 0.25),
        (Provider.OPENVINO, IsaClass.X86_AVX2, 0.25),
        # On a GPU bigger batches pay, whatever the host CPU.
        (Provider.CUDA, IsaClass.X86_AVX2, None),
        (Provider.CUDA, IsaClass.X86_AMX, None),
    ],
)
def test_the_padding_cap_is_the_providers_unless_measured_for_the_class(
    provider: Provider, isa_class: IsaClass, expected: float | None
) -> None:
    assert providers.max_padding_ratio(provider, _cpu(isa_class)) == expected


def test_the_padding_cap_reads_this_cpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "this_cpu", lambda: _cpu(IsaClass.X86_AVX2))
    assert providers.max_padding_ratio(Provider.CPU) == 0.1
    monkeypatch.setattr(providers, "this_cpu", lambda: _cpu(IsaClass.ARM_BASELINE, "aarch64"))
    assert providers.max_padding_ratio(Provider.CPU) == 0.25


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
