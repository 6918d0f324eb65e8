"""The OpenVINO provider: the fp32 graph at f32 and bf16, and when "auto" serves it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tei_ort.errors import ProviderUnavailable
from tei_ort.package import Validation, Variant, VariantName, read_manifest, write_manifest
from tei_ort.runtime import Model, Provider, RuntimeOptions, providers
from tei_ort.runtime.cpu import CpuInfo, IsaClass
from tests.runtime.conftest import HIDDEN, table

TEXTS = ["hello world", "a somewhat longer sentence about embeddings", "short", ""]

needs_bf16 = pytest.mark.skipif(
    not providers.openvino_bf16(),
    reason="needs the openvino package and a CPU with bfloat16 (AMX or AVX512_BF16)",
)


def with_matmul(package: Path) -> Path:
    """Replace the tiny graph (a lookup, which no precision changes) with lookup @ W, so that
    bfloat16 has arithmetic to round."""
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    weight = np.random.default_rng(3).standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["looked_up"]),
            helper.make_node("MatMul", ["looked_up", "w"], ["last_hidden_state"]),
        ],
        "tiny-matmul",
        inputs,
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        initializer=[
            numpy_helper.from_array(table(), "table"),
            numpy_helper.from_array(weight, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, package / "model.onnx")
    return package


def with_bf16(package: Path, passed: bool = True) -> Path:
    manifest = read_manifest(package)
    bf16 = Variant(
        VariantName.BF16,
        "model.onnx",
        ("openvino",),
        validation=Validation(passed=passed, texts=1, note="" if passed else "bad"),
    )
    write_manifest(package, dataclasses.replace(manifest, variants=(*manifest.variants, bf16)))
    return package


@needs_bf16
def test_openvino_at_f32_matches_the_cpu_ep(make_package: Callable[..., Path]) -> None:
    package = make_package()
    on_ov = Model.load(package, RuntimeOptions(provider="openvino", variant="fp32"))
    on_cpu = Model.load(package, RuntimeOptions(provider="cpu"))
    assert on_ov.provider is Provider.OPENVINO
    np.testing.assert_allclose(
        on_ov.embed(TEXTS, normalize=False), on_cpu.embed(TEXTS, normalize=False), atol=1e-6
    )


@needs_bf16
def test_auto_serves_a_validated_bf16_variant_close_to_fp32(
    make_package: Callable[..., Path],
) -> None:
    package = with_bf16(with_matmul(make_package()))
    model = Model.load(package)  # auto
    assert (model.provider, model.variant.name) == (Provider.OPENVINO, VariantName.BF16)
    reference = Model.load(package, RuntimeOptions(provider="cpu")).embed(TEXTS[:3])
    cosines = np.sum(model.embed(TEXTS[:3]) * reference, axis=1)
    assert np.all(cosines > 0.999), cosines
    assert np.all(cosines < 1.0 - 1e-9)  # bf16 really ran: not bit-identical to fp32


@needs_bf16
def test_auto_keeps_the_cpu_ep_without_a_servable_bf16_variant(
    make_package: Callable[..., Path],
) -> None:
    plain = Model.load(make_package())
    assert (plain.provider, plain.variant.name) == (Provider.CPU, VariantName.FP32)
    failed = Model.load(with_bf16(make_package(dense=True), passed=False))
    assert failed.provider is Provider.CPU


@needs_bf16
def test_auto_with_an_explicit_variant_picks_a_provider_built_for_it(
    make_package: Callable[..., Path],
) -> None:
    package = with_bf16(make_package())
    fp32 = Model.load(package, RuntimeOptions(variant="fp32"))
    assert (fp32.provider, fp32.variant.name) == (Provider.CPU, VariantName.FP32)
    bf16 = Model.load(package, RuntimeOptions(variant="bf16"))
    assert bf16.provider is Provider.OPENVINO


def test_openvino_without_bf16_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "openvino_bf16", lambda: False)
    assert Provider.OPENVINO not in providers.available()
    with pytest.raises(ProviderUnavailable, match="openvino package"):
        providers.resolve("openvino")


def test_auto_order_prefers_cuda_then_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "openvino_bf16", lambda: True)
    monkeypatch.setattr(providers, "_cuda_device_count", lambda: 0)
    assert providers.resolve("auto") is Provider.OPENVINO
    monkeypatch.setattr(providers, "openvino_bf16", lambda: False)
    assert providers.resolve("auto") is Provider.CPU


def test_bf16_is_confirmed_by_the_precision_openvino_compiled(
    make_package: Callable[..., Path],
) -> None:
    """Where OpenVINO's CPU plugin has bfloat16 the compiled model reports bf16; elsewhere it
    would compute f32 under a bf16 hint, and the session refuses rather than serve mislabelled
    figures. The branch follows the plugin's own capability list (it reads CPUID), not
    /proc/cpuinfo: with a cpuinfo of another class bound over the real one (README, make test)
    the two disagree, and the session's check is about what OpenVINO compiled."""
    openvino = pytest.importorskip("openvino")
    from tei_ort.runtime.openvino_session import OpenVINOSession

    graph = with_matmul(make_package()) / "model.onnx"
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        session = OpenVINOSession(graph, "bf16", "last_hidden_state")
        assert session.precision == "bf16"
    else:
        with pytest.raises(ProviderUnavailable, match="at f32, not bf16"):
            OpenVINOSession(graph, "bf16", "last_hidden_state")
    assert OpenVINOSession(graph, "fp32", "last_hidden_state").precision == "f32"


def test_openvino_bf16_needs_the_cpus_own_bf16_features(monkeypatch: pytest.MonkeyPatch) -> None:
    avx2 = CpuInfo("x86_64", "AMD EPYC 7B13", frozenset({"avx2", "fma"}), IsaClass.X86_AVX2, 2)
    monkeypatch.setattr(providers, "this_cpu", lambda: avx2)
    providers.openvino_bf16.cache_clear()
    try:
        assert providers.openvino_bf16() is False
        assert Provider.OPENVINO not in providers.available()
    finally:
        providers.openvino_bf16.cache_clear()
