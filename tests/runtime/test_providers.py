from __future__ import annotations

import pytest

from tei_ort.errors import ProviderUnavailable
from tei_ort.runtime import providers
from tei_ort.runtime.providers import Provider


def test_cpu_is_always_available() -> None:
    assert Provider.CPU in providers.available()
    assert providers.resolve("cpu") is Provider.CPU
    assert providers.resolve("CPU") is Provider.CPU


def test_auto_picks_cuda_only_when_a_gpu_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
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
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
