"""int8 weight-only quantization: each MatMul with a constant weight becomes ONNX Runtime's
MatMulNBits (com.microsoft) with 8-bit weights in blocks along the input axis, one fp32 scale per
block; activations are not calibrated. onnxruntime.quantization's MatMulNBitsQuantizer does the
rewrite (8 and 4 bits, the 8-bit CPU kernel since ORT 1.20), fed one weight at a time from the
data file (quantize_weight_only), so a 1.5B decoder's 6 GB never sits in memory.

Why beside the calibrated int8 (quantize.py): a decoder's weights are nearly all of its bytes, so
8-bit weights (plus one fp32 scale per 32) take ~3.6x less disk and memory than fp32, without the
per-layer activation calibration of GPTQ/SmoothQuant, which takes long on big models, and with
less error (a 25M-parameter random Qwen3: cosine min 0.99937 against the calibrated int8's
0.98887). It was not faster than fp32 on that model on an AMX Xeon (1.02x in the benchmark; the
serve-time trial keeps whichever is faster). With accuracy_level 4 the CPU kernel quantizes each
activation block to int8 and runs int8 dot products; level 0 (dequantize, fp32 compute) measured
0.27x fp32 on one short input there."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tei_ort.export import graph_files

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

BITS = 8
# Input rows per fp32 scale. Smaller blocks follow outlier rows more closely (a block shares one
# scale); 32 is the finest the 8-bit CPU kernel takes. Tiny Qwen3, last-token cosine to fp32:
# 0.9994 at 32, 0.9996 at 128 (its 32-64 wide weights make the two nearly the same blocks).
BLOCK_SIZE = 32
# MatMulNBits' compute type: 4 = int8 activations and int8 dot products.
ACCURACY_LEVEL = 4
MATMUL_NBITS = "MatMulNBits"


@dataclass(frozen=True)
class WeightOnlyReport:
    quantized_matmuls: int  # MatMuls rewritten to MatMulNBits
    kept_fp32: int  # MatMuls left in fp32 (no constant 2-D weight: attention's Q.K^T and P.V)

    def summary(self) -> str:
        return (
            f"int8 weight-only (MatMulNBits, {BITS}-bit symmetric, blocks of {BLOCK_SIZE}, "
            f"accuracy_level {ACCURACY_LEVEL}): {self.quantized_matmuls} MatMuls, "
            f"kept fp32: {self.kept_fp32}"
        )


def quantize_weight_only(
    fp32: Path, out: Path, threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES
) -> WeightOnlyReport:
    """Write `fp32`'s graph to `out` with its constant-weight MatMuls in 8-bit MatMulNBits.

    ORT's MatMulNBitsQuantizer does the rewrite on the graph's structure (load_structure: the
    weights stay on disk), one weight at a time: each is read from the data file just before the
    quantizer's own block quantization (its C++ quantize_matmul_8bits), and the 8-bit blocks and
    scales it makes go straight to a spill file, so memory holds one weight, not the model (a
    1.5B decoder's 6 GB, which the in-memory quantizer held with its output beside it). The graph
    is the one the quantizer writes from the whole model in memory, tensor for tensor
    (tests/export/test_streamed_graphs.py)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = graph_files.load_structure(fp32)
    before = sum(node.op_type == "MatMul" for node in model.graph.node)
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=ACCURACY_LEVEL,
        bits=BITS,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    spill = out.with_name(f".{out.name}.spill")
    try:
        with spill.open("wb") as sink:
            quantizer.node_quantizer = _streamed_quantizer(config, fp32.parent, sink, spill)
            quantizer.process()
        quantized = quantizer.model.model
        # The spilled tensors name their file by its absolute path, which save_streamed's
        # `source_dir / location` leaves as it is.
        graph_files.save_streamed(quantized, fp32.parent, out, threshold_bytes)
    finally:
        spill.unlink(missing_ok=True)
    after = sum(node.op_type == MATMUL_NBITS for node in quantized.graph.node)
    report = WeightOnlyReport(quantized_matmuls=after, kept_fp32=before - after)
    logger.info("%s: %s", out.name, report.summary())
    return report


def _streamed_quantizer(config: Any, source_dir: Path, sink: BinaryIO, spill: Path) -> Any:
    """ORT's DefaultWeightOnlyQuantizer, fed one weight at a time. Each call runs on a scratch
    graph of its own holding the weight read from disk (and the value info of the MatMul's input,
    whose rank the quantizer reads): protobuf (upb) frees a message's bytes only with its whole
    tree, so weights read into the model's own graph stayed resident, cleared or not (7 GB at
    1.5B). The tensors the call adds are written to `sink` and join the graph as external
    references into `spill`."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantizer,
        get_initializer,
    )

    class Streamed(DefaultWeightOnlyQuantizer):  # type: ignore[misc]
        def quantize_matmul(self, node: Any, graph_stack: list[Any]) -> Any:
            weight, graph = get_initializer(node.input[1], graph_stack)
            if weight is None or not uses_external_data(weight):
                return super().quantize_matmul(node, graph_stack)
            scratch = onnx.GraphProto()
            loaded = scratch.initializer.add()
            loaded.CopyFrom(weight)
            load_external_data_for_tensor(loaded, str(source_dir))
            loaded.data_location = onnx.TensorProto.DEFAULT
            del loaded.external_data[:]
            scratch.value_info.extend(
                info
                for g in reversed(graph_stack)
                for info in (*g.input, *g.value_info, *g.output)
                if info.name == node.input[0]
            )
            nodes = super().quantize_matmul(node, [scratch])
            for added in scratch.initializer[1:]:
                _spill(added, sink, spill)
                graph.initializer.add().CopyFrom(added)
            if len(nodes) != 1 or nodes[0] is not node:  # quantized: as ORT, drop it as input
                for info in graph.input:
                    if info.name == node.input[1]:
                        graph.input.remove(info)
                        break
            return nodes

    return Streamed(config)


def _spill(tensor: onnx.TensorProto, sink: BinaryIO, spill: Path) -> None:
    import onnx

    if len(tensor.raw_data) <= graph_files.SMALL_TENSOR_BYTES:
        return
    offset = sink.tell()
    sink.write(tensor.raw_data)
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", str(spill.resolve())), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
