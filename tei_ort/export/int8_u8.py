"""The int8 graph with its weights stored as uint8 (w + 128, zero point 128): the `int8-u8`
variant, exact at 8-bit weight precision on CPUs whose u8s8 GEMM saturates.

MLAS picks its GEMM kernel by the operands' types. u8 x s8 (the int8 variant) runs vpmaddubsw on
AVX2 and on AVX-512 without VNNI, which adds the products of input channels 2j and 2j+1 in a
saturating int16: 8-bit weights overflow it (all-MiniLM-L6-v2's int8 scored cosine min 0.988 under
emulated Haswell, 0.997 natively; quantize.py's docstring). u8 x u8 widens both operands to int16
and adds in int32 (vpmaddwd), which cannot saturate. The stored numbers are the same (w = (w + 128)
- 128), so wherever both kernels are exact (VNNI, AMX, ARM) the outputs equal the int8 graph's,
and on AVX2 they equal what the exporter measured instead of the saturated ones. Its speed against
int8-w7 (7-bit weights, u8s8, exact everywhere, faster kernel, coarser weights) and fp32 is a
per-machine question: the server's trial decides (tei_ort.runtime.selection).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tei_ort.export import graph_files

GEMM = "MatMulIntegerToFloat"  # com.microsoft: (A, B, a_scale, b_scale, a_zero, b_zero, bias)
WEIGHT_INPUT = 1
WEIGHT_ZERO_POINT_INPUT = 5
ZERO_POINT = 128
ZERO_POINT_NAME = "int8_u8_weight_zero_point"


def to_uint8_weights(model: onnx.ModelProto) -> int:
    """Rewrites every int8 GEMM whose weight is a constant int8 tensor (zero point 0, the int8
    variant's symmetric weights) to uint8 + 128 with a zero point of 128. Returns how many."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    changed = 0
    for node in graph.node:
        if node.op_type != GEMM or node.domain != "com.microsoft":
            continue
        weight = initializers.get(node.input[WEIGHT_INPUT])
        if weight is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        inputs = [*node.input, *[""] * (WEIGHT_ZERO_POINT_INPUT + 1 - len(node.input))]
        if inputs[WEIGHT_ZERO_POINT_INPUT]:
            raise ValueError(f"{node.name}: its weights already have a zero point")
        shifted = numpy_helper.to_array(weight).astype(np.int16) + ZERO_POINT
        weight.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), weight.name))
        inputs[WEIGHT_ZERO_POINT_INPUT] = ZERO_POINT_NAME
        del node.input[:]
        node.input.extend(inputs)
        changed += 1
    if changed:
        graph.initializer.append(
            numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), ZERO_POINT_NAME)
        )
    return changed


def convert(
    int8_onnx: Path,
    out_onnx: Path,
    threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES,
) -> int:
    """Writes `int8_onnx` with uint8 weights to `out_onnx`; returns the GEMMs rewritten. A graph
    with no int8 GEMM is refused: the variant would be the int8 graph under another name."""
    model = graph_files.load(int8_onnx)
    changed = to_uint8_weights(model)
    if not changed:
        raise ValueError(f"{int8_onnx}: no int8-weight {GEMM} to store as uint8")
    graph_files.save(model, out_onnx, threshold_bytes)
    return changed
