"""The raw ONNX graph of a source model: optimum's exporter (torch.onnx underneath), dynamic batch
and sequence axes, and for SPLADE the sparse max-pool appended inside the graph."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tei_ort.errors import PackageError
from tei_ort.export import graph_files
from tei_ort.export.architectures import own
from tei_ort.export.recipes import MASKED_LM, Recipe

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # optimum's recommended minimum for BERT-style encoders
MLM_LOGITS = "logits"
SPARSE_OUTPUT = MASKED_LM.output_name
DYNAMIC_AXES = ("batch_size", "sequence_length")


def export_onnx(
    model_dir: Path,
    recipe: Recipe,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES,
) -> None:
    """Write optimum's graph for `recipe` to `out`: inputs (batch, seq) int64, one output named by
    `recipe.head.export_output`. `add_head` turns it (or its fused form) into the package graph.
    Families whose modelling code lives on the hub are exported from our own torch modules.
    Graphs over `threshold_bytes` keep their tensors in `<out>.data` (graph_files)."""
    if recipe.family.own_module is not None:
        # torch.onnx writes a model over 2 GB as one file per tensor beside the graph: export
        # into a folder of its own, then rewrite it in the package layout.
        with tempfile.TemporaryDirectory(prefix="tei-export-", dir=out.parent) as tmp:
            own.export(model_dir, recipe, Path(tmp) / "model.onnx", opset=opset)
            # Tensor by tensor: the whole graph in memory beside torch's freed model was
            # most of this stage's peak on large decoders.
            graph = graph_files.load_structure(Path(tmp) / "model.onnx")
            check_io(graph, recipe, recipe.head.export_output)
            graph_files.save_streamed(graph, Path(tmp), out, threshold_bytes)
        return
    from optimum.exporters.onnx import main_export
    from torch.jit import TracerWarning  # type: ignore[attr-defined]

    with tempfile.TemporaryDirectory(prefix="tei-export-") as tmp, warnings.catch_warnings():
        # The tracer warns about constants in transformers' mask code; the axes stay dynamic
        # (check_io) and validation compares the graph with PyTorch on mixed-length batches.
        warnings.simplefilter("ignore", TracerWarning)
        # library_name="transformers": on a sentence-transformers folder optimum would otherwise
        # export pooled sentence embeddings; pooling, Dense and Normalize belong to the runtime.
        main_export(
            str(model_dir),
            tmp,
            task=recipe.head.optimum_task,
            opset=opset,
            library_name="transformers",
            do_validation=False,
            local_files_only=True,
        )
        graph = graph_files.load(Path(tmp) / "model.onnx")
    if recipe.family.raw_graph_fix is not None:
        changed = recipe.family.raw_graph_fix(graph)
        logger.info("%s: graph fix changed %d places", recipe.architecture, changed)
    check_io(graph, recipe, recipe.head.export_output)
    graph_files.save(graph, out, threshold_bytes)


def add_head(
    graph_path: Path,
    recipe: Recipe,
    threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES,
) -> None:
    """Make an exported (or fused) graph the package graph, in place. Runs after fusion: the
    transformer optimizer's shape inference does not follow the appended SPLADE nodes."""
    graph = graph_files.load_structure(graph_path)  # the weights stay on disk
    if recipe.head is MASKED_LM:
        append_splade(graph)
    check_io(graph, recipe, recipe.head.output_name)
    graph_files.save_streamed(graph, graph_path.parent, graph_path, threshold_bytes)


def append_splade(model: onnx.ModelProto) -> None:
    """Replace the MLM output logits (batch, seq, vocab) by SPLADE's
    max over tokens of log(1 + relu(logits)), padding masked out -> (batch, vocab).

    log(1 + relu(x)) never decreases with x, so it is applied after the max: the only op on the
    (batch, seq, vocab) tensor is the masking Where (padding -> -inf, which relu turns into 0),
    instead of four elementwise passes over it."""
    graph = model.graph
    (logits,) = [o for o in graph.output if o.name == MLM_LOGITS]
    vocab = logits.type.tensor_type.shape.dim[2]
    p = "splade/"
    graph.initializer.extend(
        [
            helper.make_tensor(p + "one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor(p + "minus_inf", TensorProto.FLOAT, [], [-np.inf]),
            helper.make_tensor(p + "k", TensorProto.INT64, [1], [1]),
            helper.make_tensor(p + "axis_seq", TensorProto.INT64, [1], [1]),
            helper.make_tensor(p + "axis_last", TensorProto.INT64, [1], [2]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Cast", ["attention_mask"], [p + "mask"], to=TensorProto.BOOL),
            helper.make_node("Unsqueeze", [p + "mask", p + "axis_last"], [p + "mask3"]),
            helper.make_node("Where", [p + "mask3", MLM_LOGITS, p + "minus_inf"], [p + "masked"]),
            # TopK(k=1) rather than ReduceMax: the symbolic shape inference that fusion and fp16
            # conversion run cannot follow ReduceMax's axes input (opset >= 18).
            helper.make_node("TopK", [p + "masked", p + "k"], [p + "top", p + "top_index"], axis=1),
            helper.make_node("Squeeze", [p + "top", p + "axis_seq"], [p + "max"]),  # (b, vocab)
            helper.make_node("Relu", [p + "max"], [p + "relu"]),
            helper.make_node("Add", [p + "relu", p + "one"], [p + "one_plus"]),
            helper.make_node("Log", [p + "one_plus"], [SPARSE_OUTPUT]),
        ]
    )
    graph.output.remove(logits)
    output = helper.make_tensor_value_info(SPARSE_OUTPUT, TensorProto.FLOAT, ["batch_size", None])
    output.type.tensor_type.shape.dim[1].CopyFrom(vocab)
    graph.output.append(output)


def check_io(model: onnx.ModelProto, recipe: Recipe, output_name: str) -> None:
    """The graph must have the inputs the recipe promises and exactly its one output; a mismatch is
    a bug in the recipe table, caught here rather than at serving time."""
    inputs = {i.name for i in model.graph.input}
    expected = {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if recipe.family.uses_token_type_ids else set()
    )
    outputs = [o.name for o in model.graph.output]
    if inputs != expected or outputs != [output_name]:
        raise PackageError(
            f"exported {recipe.architecture} graph has inputs {sorted(inputs)} and outputs {outputs}; "
            f"the recipe expects {sorted(expected)} -> {output_name}"
        )
    for value in model.graph.input:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        if dims != list(DYNAMIC_AXES):
            raise PackageError(
                f"input {value.name} has axes {dims}, expected dynamic {DYNAMIC_AXES}"
            )
