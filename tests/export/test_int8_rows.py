"""int8 calibration rows are computed once per fp32 graph and feeds, for both weight widths the
pipeline builds (int8, int8-w7), and forgotten after them. A tiny hand-made graph; no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tei_ort.export import int8_rows

BOTH = frozenset({7, 8})


def _graph(path: Path, scale: float = 1.0) -> onnx.ModelProto:
    """attention_mask (b, s) -> (b, s, 1) -> x `act` (b, s, 4) -> MatMul (4, 3): `act` is the
    one weight MatMul's input, as a layer norm's output is in an encoder."""
    w1 = numpy_helper.from_array(np.array([[1.0, -2.0, 3.0, 0.5]], np.float32) * scale, "w1")
    w2 = numpy_helper.from_array(np.ones((4, 3), np.float32), "w2")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("MatMul", ["m3", "w1"], ["act"]),
        helper.make_node("MatMul", ["act", "w2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 3])],
        [w1, w2, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return model


def _feeds(width: int) -> list[dict[str, Any]]:
    mask = np.ones((2, width), np.int64)
    mask[1, width // 2 :] = 0
    return [{"attention_mask": mask}]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the forward passes ran; and no rows left from another test."""
    monkeypatch.setattr(int8_rows, "_shared", None)
    calls: list[int] = []
    real = int8_rows.calibration_rows

    def counting(*args: Any) -> dict[str, Any]:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(int8_rows, "calibration_rows", counting)
    return calls


def test_rows_are_shared_by_both_widths_then_forgotten(tmp_path: Path, counted: list[int]) -> None:
    path = tmp_path / "g.onnx"
    model = _graph(path)
    feeds = _feeds(4)
    rows8 = int8_rows.shared_rows(path, model, ["act"], feeds, 8, BOTH)
    # 4 + 2 real tokens, each row the mask value (1) times w1
    assert rows8["act"].shape == (6, 4)
    assert np.array_equal(rows8["act"], np.tile([1.0, -2.0, 3.0, 0.5], (6, 1)))
    assert not rows8["act"].flags.writeable  # shared: nobody may change them in place
    rows7 = int8_rows.shared_rows(path, model, ["act"], feeds, 7, BOTH)
    assert rows7 is rows8 and len(counted) == 1
    # Both widths have read them: a third call runs the forward passes again.
    again = int8_rows.shared_rows(path, model, ["act"], feeds, 8, BOTH)
    assert again is not rows8 and len(counted) == 2


def test_other_feeds_or_another_graph_are_not_served_stale_rows(
    tmp_path: Path, counted: list[int]
) -> None:
    path = tmp_path / "g.onnx"
    model = _graph(path)
    first = int8_rows.shared_rows(path, model, ["act"], _feeds(4), 8, BOTH)
    other_feeds = int8_rows.shared_rows(path, model, ["act"], _feeds(6), 7, BOTH)
    assert other_feeds["act"].shape == (9, 4) and len(counted) == 2
    # The same path rewritten with other weights: its bytes, not its name, decide.
    model = _graph(path, scale=2.0)
    rewritten = int8_rows.shared_rows(path, model, ["act"], _feeds(6), 8, BOTH)
    assert len(counted) == 3
    assert np.array_equal(rewritten["act"][0], [2.0, -4.0, 6.0, 1.0])
    assert first["act"][0].tolist() == [1.0, -2.0, 3.0, 0.5]
