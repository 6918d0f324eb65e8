"""Transformer fusion with onnxruntime.transformers.optimizer: attention, skip-layer-norm, gelu and
embedding-layer-norm subgraphs become single contrib ops (what CUDA kernels are written for)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tei_ort.export import graph_files
from tei_ort.export.recipes import Recipe

if TYPE_CHECKING:
    from onnx import TensorProto

logger = logging.getLogger(__name__)

# Fused ops, grouped by what they replace; a fused BERT-style graph has one of each group.
FUSED_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("Attention", "MultiHeadAttention"),
    "skip_layer_norm": ("SkipLayerNormalization",),
    "gelu": ("Gelu", "FastGelu", "BiasGelu"),
}


@dataclass(frozen=True)
class FusionReport:
    op_counts: dict[str, int]  # fused op type -> count in the graph

    def is_complete(self) -> bool:
        """Every group of FUSED_GROUPS is present at least once."""
        return all(
            any(self.op_counts.get(op, 0) > 0 for op in ops) for ops in FUSED_GROUPS.values()
        )

    def summary(self) -> str:
        return ", ".join(f"{op} x{count}" for op, count in sorted(self.op_counts.items()) if count)


def fuse(
    raw: Path,
    out: Path,
    recipe: Recipe,
    *,
    num_heads: int,
    hidden_size: int,
    threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES,
) -> FusionReport:
    from onnxruntime.transformers.optimizer import optimize_model

    # A graph with external data is fused without its weights in memory: its fusions (norms,
    # rotary, skip connections) read node patterns, shapes and small constants only, while the
    # optimizer's shape inference copies the model several times (a 1.1 GB graph peaked at
    # 9.4 GB loaded whole). Smaller graphs keep the in-memory path.
    structure = graph_files.load_structure(raw)
    external = graph_files.has_external_data(structure)
    # opt_level=0: only the Python fusions, no ORT session rewrites, so the graph stays portable
    # between the CPU and CUDA providers.
    model = optimize_model(
        structure if external else str(raw),
        model_type=recipe.family.fusion_model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
        use_gpu=False,
    )
    counts = {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}
    if external:
        graph_files.save_streamed(model.model, raw.parent, out, threshold_bytes)
    else:
        graph_files.save(model.model, out, threshold_bytes)
    report = FusionReport(counts)
    logger.info("fused %s: %s", recipe.architecture, report.summary() or "nothing fused")
    return report


def convert_fp16(
    source: Path, out: Path, threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES
) -> None:
    """fp16 weights and compute for CUDA. keep_io_types: the server still feeds int64 ids and reads
    float32 outputs, so one code path serves every variant. A graph with external data is
    converted without its weights in memory (the converter's shape inference copies the model):
    the converter retypes the graph, then each weight it retyped is converted on its way to the
    new data file, by the converter's own tensor function, so the result is the same."""
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors, uses_external_data
    from onnxruntime.transformers.onnx_model import OnnxModel

    structure = graph_files.load_structure(source)
    external = graph_files.has_external_data(structure)
    model = OnnxModel(structure if external else graph_files.load(source))
    was_float = {
        t.name
        for t in _get_all_tensors(model.model)
        if uses_external_data(t) and t.data_type == TensorProto.FLOAT
    }
    with _shapes_from_dims():
        # Symbolic shape inference knows the fused contrib ops (Attention, SkipLayerNormalization).
        model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
    if not external:
        graph_files.save(model.model, out, threshold_bytes)
        return

    def to_half(tensor: TensorProto, blob: bytes) -> bytes:
        if tensor.name not in was_float or tensor.data_type != TensorProto.FLOAT16:
            return blob
        return _half_in_chunks(blob)

    graph_files.save_streamed(model.model, source.parent, out, threshold_bytes, convert=to_half)


# float32 elements converted at a time (64 MB): the converter's clamps build about ten temporaries
# the size of their input (int64 indices of np.where among them), so a whole embedding table
# (151,646 x 1,536: 0.93 GB) peaked at several GB; in slices, at a few hundred MB.
HALF_CHUNK = 1 << 24


def _half_in_chunks(blob: bytes) -> bytes:
    """The bytes convert_tensor_float_to_float16 gives (its own convert_np_to_float16, with the
    same default bounds), computed slice by slice: every step of it is elementwise."""
    import numpy as np
    from onnxruntime.transformers.float16 import convert_np_to_float16

    values = np.frombuffer(blob, dtype=np.float32)
    half = np.empty(values.shape, dtype=np.float16)
    for start in range(0, len(values), HALF_CHUNK):
        stop = start + HALF_CHUNK
        half[start:stop] = convert_np_to_float16(values[start:stop])
    return half.tobytes()


@contextlib.contextmanager
def _shapes_from_dims() -> Iterator[None]:
    """The converter's make_value_info_from_tensor reads a whole tensor (numpy_helper.to_array)
    only to learn its shape, which fails on a tensor left on disk; the tensor's dims are that
    shape. Patched for the one call, in the module object the converter imports (onnxruntime's
    transformers folder is on sys.path as its own top-level modules)."""
    import sys

    from onnx import ValueInfoProto, helper

    def from_dims(tensor: TensorProto) -> ValueInfoProto:
        return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))

    modules = [
        sys.modules[n] for n in ("float16", "onnxruntime.transformers.float16") if n in sys.modules
    ]
    name = "make_value_info_from_tensor"
    saved = [getattr(m, name) for m in modules]
    for module in modules:
        setattr(module, name, from_dims)
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            setattr(module, name, original)
