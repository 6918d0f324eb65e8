"""int8_u8: an int8 GEMM's weights stored as uint8 + 128 with zero point 128. A hand-made graph
of two MatMulIntegerToFloat nodes (one constant int8 weight, one uint8 weight that must be left
alone), and the variant as `tei-serve --variant int8-u8` exports it (without int8)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tei_ort.export import int8_u8
from tei_ort.export.pipeline import export_model
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tests.export.conftest import TINY_OPTIONS, TinySource

K, N = 64, 48


def _graph(path: Path, weight_zero_point: bool = False) -> np.ndarray:
    """x (uint8, zero point 3) @ w (int8) * scales -> y; a second GEMM has uint8 weights already.
    Small magnitudes: no kernel saturates them, so the outputs are exact on every CPU class."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(K, N)).astype(np.int8)
    w_u8 = rng.integers(0, 256, size=(K, N)).astype(np.uint8)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w_u8, "w_u8"),
        numpy_helper.from_array(np.array(0.05, np.float32), "a_scale"),
        numpy_helper.from_array(np.full(N, 0.01, np.float32), "b_scale"),
        numpy_helper.from_array(np.array(3, np.uint8), "a_zero"),
        numpy_helper.from_array(np.array(7, np.uint8), "b_zero_u8"),
    ]
    first = ["x", "w", "a_scale", "b_scale", "a_zero"]
    if weight_zero_point:
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "b_zero"))
        first.append("b_zero")
    nodes = [
        helper.make_node("MatMulIntegerToFloat", first, ["y"], domain="com.microsoft"),
        helper.make_node(
            "MatMulIntegerToFloat",
            ["x", "w_u8", "a_scale", "b_scale", "a_zero", "b_zero_u8"],
            ["z"],
            domain="com.microsoft",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["b", K])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", N]),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=9,  # what ONNX Runtime reads, whatever the onnx package's newest
    )
    onnx.save(model, str(path))
    return w


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {"x": x})]


def test_weights_become_uint8_plus_128_with_zero_point_128(tmp_path: Path) -> None:
    w = _graph(tmp_path / "int8.onnx")
    assert int8_u8.convert(tmp_path / "int8.onnx", tmp_path / "u8.onnx") == 1
    model = onnx.load(str(tmp_path / "u8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemm, other = model.graph.node
    assert inits[gemm.input[1]].dtype == np.uint8
    np.testing.assert_array_equal(inits[gemm.input[1]].astype(np.int16) - 128, w)
    assert gemm.input[4] == "a_zero" and inits[gemm.input[5]] == np.uint8(128)
    assert list(other.input) == ["x", "w_u8", "a_scale", "b_scale", "a_zero", "b_zero_u8"]


def _exact_first_gemm(u8_graph: Path, x: np.ndarray) -> np.ndarray:
    """The first GEMM's value in integers: (x - 3) @ w * 0.05 * 0.01."""
    weights = onnx.load(str(u8_graph)).graph.initializer[0]
    w_int = numpy_helper.to_array(weights).astype(np.int64) - 128
    return np.asarray((x.astype(np.int64) - 3) @ w_int * np.float32(0.05 * 0.01), np.float32)


def test_outputs_equal_the_int8_graphs(tmp_path: Path) -> None:
    """Activations below 64: a pair of u8 x s8 products stays under int16's 32,767 (63 * 127 * 2),
    so even AVX2's saturating u8s8 kernel is exact and the two graphs must agree on every CPU."""
    _graph(tmp_path / "int8.onnx")
    int8_u8.convert(tmp_path / "int8.onnx", tmp_path / "u8.onnx")
    x = np.random.default_rng(1).integers(0, 64, size=(5, K)).astype(np.uint8)
    want = _run(tmp_path / "int8.onnx", x)
    got = _run(tmp_path / "u8.onnx", x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[0], _exact_first_gemm(tmp_path / "u8.onnx", x), 1e-5, 1e-5)


def test_outputs_are_exact_over_the_full_uint8_range(tmp_path: Path) -> None:
    """Activations up to 255, where u8s8 pairs overflow int16 (AVX2 without VNNI saturates them):
    the uint8-weight graph runs u8u8 and equals the exact integer product on every CPU."""
    _graph(tmp_path / "int8.onnx")
    int8_u8.convert(tmp_path / "int8.onnx", tmp_path / "u8.onnx")
    x = np.random.default_rng(1).integers(0, 256, size=(5, K)).astype(np.uint8)
    x[0] = 255  # the largest pairs there are
    got = _run(tmp_path / "u8.onnx", x)
    np.testing.assert_allclose(got[0], _exact_first_gemm(tmp_path / "u8.onnx", x), 1e-5, 1e-5)


def test_a_graph_without_int8_weights_is_refused(tmp_path: Path) -> None:
    _graph(tmp_path / "int8.onnx")
    int8_u8.convert(tmp_path / "int8.onnx", tmp_path / "u8.onnx")
    with pytest.raises(ValueError, match="no int8-weight MatMulIntegerToFloat"):
        int8_u8.convert(tmp_path / "u8.onnx", tmp_path / "again.onnx")


def test_weights_with_a_zero_point_are_refused(tmp_path: Path) -> None:
    _graph(tmp_path / "int8.onnx", weight_zero_point=True)
    with pytest.raises(ValueError, match="already have a zero point"):
        int8_u8.convert(tmp_path / "int8.onnx", tmp_path / "u8.onnx")


def test_int8_u8_alone_is_quantized_afresh_validated_and_served(
    tiny_source: TinySource, tmp_path: Path
) -> None:
    """What `tei-serve --variant int8-u8` exports (fp32 + int8-u8, no int8 graph to derive from):
    the quantizer runs for it, its graph is validated like any variant and served on the CPU EP."""
    options = replace(TINY_OPTIONS, variants=(VariantName.FP32, VariantName.INT8_U8))
    result = export_model(str(tiny_source("bert", "embedding")), tmp_path / "pkg", options)
    assert [v.name for v in result.manifest.variants] == [VariantName.FP32, VariantName.INT8_U8]
    assert not (result.path / "model.int8.onnx").exists()
    v = result.manifest.variant(VariantName.INT8_U8).validation
    assert v is not None and v.note.startswith("int8's weights as uint8 (zero point 128)")
    assert v.cosine_min is not None and v.passed == (v.cosine_min >= 0.995)
    assert v.passed, v.note  # u8u8 is exact on every CPU class: the tiny BERT's int8 passes
    graph = onnx.load(str(result.path / "model.int8-u8.onnx"))
    weights = {t.name: t.data_type for t in graph.graph.initializer}
    gemms = [n for n in graph.graph.node if n.op_type == int8_u8.GEMM]
    assert gemms and all(weights[n.input[1]] == TensorProto.UINT8 for n in gemms)
    model = Model.load(result.path, RuntimeOptions(provider="cpu", variant="int8-u8"))
    assert model.variant.name is VariantName.INT8_U8
    assert model.embed(["hello world"]).shape == (1, result.manifest.dimensions)
