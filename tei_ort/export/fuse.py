"""Transformer fusion with onnxruntime.transformers.optimizer: attention, skip-layer-norm, gelu and
embedding-layer-norm subgraphs become single contrib ops (what CUDA kernels are written for)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tei_ort.export import graph_files
from tei_ort.export.recipes import Recipe

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
    float32 outputs, so one code path serves every variant."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(graph_files.load(source))
    # Symbolic shape inference knows the fused contrib ops (Attention, SkipLayerNormalization...).
    model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
    graph_files.save(model.model, out, threshold_bytes)
