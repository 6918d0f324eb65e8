"""The raw ONNX graph of a source model: optimum's exporter (torch.onnx underneath), dynamic batch
and sequence axes, and for SPLADE the sparse max-pool appended inside the graph."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tei_ort.errors import PackageError
from tei_ort.export.recipes import MASKED_LM, Recipe

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # optimum's recommended minimum for BERT-style encoders
MLM_LOGITS = "logits"
SPARSE_OUTPUT = MASKED_LM.output_name
DYNAMIC_AXES = ("batch_size", "sequence_length")


def export_onnx(model_dir: Path, recipe: Recipe, out: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Write the graph for `recipe` to `out`: inputs (batch, seq) int64, one output named by
    `recipe.head.output_name`."""
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory(prefix="tei-export-") as tmp:
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
        graph = onnx.load(str(Path(tmp) / "model.onnx"))
    if recipe.head is MASKED_LM:
        append_splade(graph)
    check_io(graph, recipe)
    onnx.save(graph, str(out))


def append_splade(model: onnx.ModelProto) -> None:
    """Replace the MLM output logits (batch, seq, vocab) by SPLADE's
    max over tokens of log(1 + relu(logits)) * attention_mask -> (batch, vocab).

    The product with the mask may run after log1p(relu(.)) because that is >= 0: a padded token
    contributes 0, which never beats a real token's value in the max."""
    graph = model.graph
    (logits,) = [o for o in graph.output if o.name == MLM_LOGITS]
    vocab = logits.type.tensor_type.shape.dim[2]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    prefix = "splade/"
    one = helper.make_tensor(prefix + "one", TensorProto.FLOAT, [], [1.0])
    axes_seq = helper.make_tensor(prefix + "axes_seq", TensorProto.INT64, [1], [1])
    axes_last = helper.make_tensor(prefix + "axes_last", TensorProto.INT64, [1], [2])
    graph.initializer.extend([one, axes_seq, axes_last])
    nodes = [
        helper.make_node("Relu", [MLM_LOGITS], [prefix + "relu"]),
        helper.make_node("Add", [prefix + "relu", prefix + "one"], [prefix + "one_plus"]),
        helper.make_node("Log", [prefix + "one_plus"], [prefix + "log1p"]),  # (batch, seq, vocab)
        helper.make_node("Cast", ["attention_mask"], [prefix + "mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [prefix + "mask", prefix + "axes_last"], [prefix + "mask3"]),
        helper.make_node("Mul", [prefix + "log1p", prefix + "mask3"], [prefix + "masked"]),
    ]
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        nodes.append(
            helper.make_node(
                "ReduceMax", [prefix + "masked", prefix + "axes_seq"], [SPARSE_OUTPUT], keepdims=0
            )
        )
    else:
        nodes.append(helper.make_node("ReduceMax", [prefix + "masked"], [SPARSE_OUTPUT], axes=[1], keepdims=0))
    graph.node.extend(nodes)
    graph.output.remove(logits)
    output = helper.make_tensor_value_info(SPARSE_OUTPUT, TensorProto.FLOAT, [DYNAMIC_AXES[0], None])
    output.type.tensor_type.shape.dim[1].CopyFrom(vocab)
    graph.output.append(output)


def check_io(model: onnx.ModelProto, recipe: Recipe) -> None:
    """The graph must have the inputs the recipe promises and exactly its one output; a mismatch is
    a bug in the recipe table, caught here rather than at serving time."""
    inputs = {i.name for i in model.graph.input}
    expected = {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if recipe.family.uses_token_type_ids else set()
    )
    outputs = [o.name for o in model.graph.output]
    if inputs != expected or outputs != [recipe.head.output_name]:
        raise PackageError(
            f"exported {recipe.architecture} graph has inputs {sorted(inputs)} and outputs {outputs}; "
            f"the recipe expects {sorted(expected)} -> {recipe.head.output_name}"
        )
    for value in model.graph.input:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        if dims != list(DYNAMIC_AXES):
            raise PackageError(f"input {value.name} has axes {dims}, expected dynamic {DYNAMIC_AXES}")
