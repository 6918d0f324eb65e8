"""DeBERTa-v2/v3 (model_type deberta-v2): disentangled relative-position attention, no absolute
positions (v3: position_biased_input false) and no token types (v3: type_vocab_size 0; a
checkpoint with token types fails the graph's input check with a clear error). TEI serves its
classifiers and cross-encoder re-rankers; ORT's BERT fusion does not match its attention."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION, Family

if TYPE_CHECKING:
    import onnx


def drop_self_attention_length_checks(model: onnx.ModelProto) -> int:
    """Replace transformers' `build_rpos` branch (a TorchScript If: rebuild the relative positions
    when the key length differs from the query length) by its else branch. In self-attention both
    come from the same hidden states, so the lengths are equal and the else branch (the given
    relative positions) is the one ever taken; OpenVINO's CPU plugin cannot compile the If.
    Validation against PyTorch checks the result. Returns how many were replaced."""
    from onnx import helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    replaced = 0
    for node in list(graph.node):
        if node.op_type != "If" or len(node.output) != 1:
            continue
        condition = producers.get(node.input[0])
        while condition is not None and condition.op_type == "Cast":  # TorchScript's bool casts
            condition = producers.get(condition.input[0])
        compared = producers.get(condition.input[0]) if condition is not None else None
        branches = {a.name: a.g for a in node.attribute}
        taken = branches.get("else_branch")
        if (
            condition is None
            or condition.op_type != "Not"
            or compared is None
            or compared.op_type != "Equal"
            or taken is None
            or [n.op_type for n in taken.node] != ["Identity"]
            or taken.node[0].output[0] != taken.output[0].name
        ):
            continue
        identity = helper.make_node(
            "Identity", [taken.node[0].input[0]], [node.output[0]], name=node.name + "/else"
        )
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, identity)
        replaced += 1
    _prune(model)
    return replaced


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (the dead length comparisons)."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {output.name for output in graph.output}
        used |= {
            name for node in graph.node for a in node.attribute for name in _subgraph_inputs(a)
        }
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _subgraph_inputs(attribute: onnx.AttributeProto) -> set[str]:
    """Outer-scope names a subgraph (If / Loop body) reads."""
    if not attribute.HasField("g"):
        return set()
    return {name for node in attribute.g.node for name in node.input}


FAMILIES = (
    Family(
        "deberta-v2",
        "DebertaV2",
        uses_token_type_ids=False,
        position_offset=0,
        fusion_model_type="bert",
        heads=(MODEL, SEQUENCE_CLASSIFICATION),
        raw_graph_fix=drop_self_attention_length_checks,
    ),
)
