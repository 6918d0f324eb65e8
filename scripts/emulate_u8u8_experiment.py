"""Experiment for issue 9: the package's int8 graph with its int8 weights stored as uint8
(w + 128, zero point 128), so that MLAS runs its u8u8 kernels instead of u8s8.

Why: on AVX2 without VNNI, MLAS's u8s8 GEMM adds pairs of u8 x s8 products in saturating int16
(vpmaddubsw); its u8u8 GEMM widens both operands to int16 and adds in int32 (vpmaddwd), which
cannot saturate. The weights are the same numbers (w = (w + 128) - 128), so wherever a kernel is
exact the outputs equal the int8 graph's: fidelity stays what the exporter measured, on every
class. What it costs in speed must be measured on a real AVX2 machine (not under emulation).

Writes a copy of PACKAGE (links to its files) whose model.int8.onnx is the u8u8 graph, so the
other emulate_* scripts can judge it as the "int8" variant:

    .venv/bin/python scripts/emulate_u8u8_experiment.py PACKAGE /tmp/pkg-u8u8
    .venv/bin/python scripts/emulate_int8_layers.py /tmp/pkg-u8u8 --variant int8 --text "yes please"
    .venv/bin/python scripts/emulated_fidelity.py /tmp/pkg-u8u8 --variants int8 --passages 24
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

GEMM = "MatMulIntegerToFloat"
INT8 = "model.int8.onnx"


def to_u8u8(graph: onnx.ModelProto) -> int:
    """Every int8 GEMM weight (B, input 1) to uint8 + 128 with a uint8 zero point of 128 (input 5).
    Returns how many GEMMs changed."""
    inits = {i.name: i for i in graph.graph.initializer}
    zero = numpy_helper.from_array(np.array(128, np.uint8), "u8u8_weight_zero_point")
    graph.graph.initializer.append(zero)
    changed = 0
    for node in graph.graph.node:
        if node.op_type != GEMM or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.dtype != np.int8:
            continue
        if len(node.input) > 5 and node.input[5]:
            raise ValueError(f"{node.name} already has a weight zero point")
        shifted = (weight.astype(np.int16) + 128).astype(np.uint8)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(shifted, node.input[1]))
        inputs = list(node.input) + [""] * (6 - len(node.input))
        inputs[5] = zero.name
        del node.input[:]
        node.input.extend(inputs)
        changed += 1
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True)
    for item in args.package.iterdir():
        if item.name != INT8:
            (args.out / item.name).symlink_to(item.resolve())
    graph = onnx.load(str(args.package / INT8))
    changed = to_u8u8(graph)
    onnx.save(graph, str(args.out / INT8))
    print(f"{args.out / INT8}: {changed} GEMMs with uint8 weights (zero point 128)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
