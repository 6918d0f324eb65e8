"""The graph side of int8 quantization (tei_ort.export.quantize): which weight MatMuls form a
group (one input; a fused Attention's QKV GEMM), and the rewrite of each group into activation
quantization, u8 x s8 MatMulIntegerToFloat GEMMs and the fp32 outlier-channel products."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from tei_ort.export.int8_plans import Plan
from tei_ort.export.int8_weights import F32, I8

MS_DOMAIN = "com.microsoft"
_ATTENTION_EXTRAS = {
    "qkv_hidden_sizes",
    "unidirectional",
    "past_present_share_buffer",
    "do_rotary",
    "rotary_embedding_dim",
}


@dataclass
class Group:
    """Weight MatMuls reading one activation (Q/K/V do), or one fused Attention node."""

    input: str
    nodes: list[int]  # positions in graph.node
    weights: list[F32]  # (K, N) each; an Attention's packed QKV weight split in three


def find_groups(graph: onnx.GraphProto) -> list[Group]:
    inits = {init.name: init for init in graph.initializer}

    def weight(name: str) -> F32 | None:
        init = inits.get(name)
        if init is None or len(init.dims) != 2 or init.data_type != onnx.TensorProto.FLOAT:
            return None
        return np.asarray(numpy_helper.to_array(init), dtype=np.float32)

    by_input: dict[str, Group] = {}
    attention: list[Group] = []
    for position, node in enumerate(graph.node):
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            w = weight(node.input[1])
            if w is not None:  # activation x activation MatMuls (attention scores) stay fp32
                group = by_input.setdefault(node.input[0], Group(node.input[0], [], []))
                group.nodes.append(position)
                group.weights.append(w)
        elif node.op_type == "Attention" and node.domain == MS_DOMAIN and _plain_attention(node):
            w = weight(node.input[1])
            if w is not None and w.shape[1] % 3 == 0:
                attention.append(Group(node.input[0], [position], np.split(w, 3, axis=1)))
    return [*by_input.values(), *attention]


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for position, node in enumerate(graph.node):
        for name in dict.fromkeys(node.input):
            found.setdefault(name, []).append(position)
    return found


def _bias_add(
    graph: onnx.GraphProto, consumers: dict[str, list[int]], tensor: str
) -> tuple[int, str, str] | None:
    """The `tensor + bias` Add that alone reads `tensor`, as (position, bias, Add's output)."""
    readers = consumers.get(tensor, [])
    if len(readers) != 1 or any(o.name == tensor for o in graph.output):
        return None
    add = graph.node[readers[0]]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    bias = add.input[1] if add.input[0] == tensor else add.input[0]
    init = next((i for i in graph.initializer if i.name == bias), None)
    if init is None or len(init.dims) != 1 or init.data_type != onnx.TensorProto.FLOAT:
        return None
    return readers[0], bias, add.output[0]


def _plain_attention(node: onnx.NodeProto) -> bool:
    """An encoder Attention: packed equal-width QKV, a bias, an optional mask, nothing else."""
    return (
        len(node.input) >= 3
        and bool(node.input[2])
        and not any(node.input[4:])
        and not any(node.output[1:])
        and not {a.name for a in node.attribute} & _ATTENTION_EXTRAS
    )


def _multi_head_attention(node: onnx.NodeProto, qkv: list[str]) -> onnx.NodeProto:
    """Attention minus its QKV GEMM: MultiHeadAttention adds the packed QKV bias itself and
    takes the same mask (key lengths or a 2-D padding mask)."""
    attrs = {
        a.name: helper.get_attribute_value(a)
        for a in node.attribute
        if a.name in ("num_heads", "mask_filter_value", "scale")
    }
    mask = node.input[3] if len(node.input) > 3 else ""
    return helper.make_node(
        "MultiHeadAttention",
        [*qkv, node.input[2], mask],
        [node.output[0]],
        name=f"{node.name or node.output[0]}_mha",
        domain=MS_DOMAIN,
        **attrs,
    )


@dataclass(frozen=True)
class _Quantized:
    nodes: tuple[onnx.NodeProto, ...]
    q: str  # the uint8 activation
    scale: str  # the GEMM's activation scale: the static scale, or 1 with per-token scaling
    zero_point: str
    row_scale: str | None  # (..., 1) per-token scales to multiply the GEMM output by
    outlier: str | None  # (..., outliers) the input's outlier channels, for the fp32 MatMul


class Rewriter:
    """Writes the activation quantization and the int8 GEMMs into the graph, in place of the
    fp32 MatMuls (and Attention QKV GEMMs); `splice` then puts every new node in order."""

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.consumers = _consumers(graph)
        self.new_nodes: dict[int, list[onnx.NodeProto]] = {}  # position -> its replacement
        self.attention_rewritten = 0

    def group(self, p: str, group: Group, plan: Plan, wq: I8, ws: F32) -> None:
        act = self.quantize(p, group.input, plan)
        widths = np.cumsum([w.shape[1] for w in group.weights])[:-1]
        # (outliers, N_j) each: the fp32 weight rows of the outlier channels
        exact = [w[list(plan.outliers)] for w in group.weights]
        parts = list(zip(np.split(wq, widths, axis=1), np.split(ws, widths), exact, strict=True))
        first = self.graph.node[group.nodes[0]]
        if first.op_type == "Attention":
            self.attention_rewritten += 1
            qkv = [f"{p}{j}_out" for j in range(3)]
            gemms = [
                n
                for j, (q, s, e) in enumerate(parts)
                for n in self.matmul(f"{p}{j}_", act, q, s, e, qkv[j])
            ]
            mha = _multi_head_attention(first, qkv)
            self.new_nodes[group.nodes[0]] = [*act.nodes, *gemms, mha]
            return
        # The quantization goes before the group's first MatMul, where its input exists.
        self.new_nodes[group.nodes[0]] = list(act.nodes)
        for j, (position, (q, s, e)) in enumerate(zip(group.nodes, parts, strict=True)):
            out, bias = self.graph.node[position].output[0], ""
            fold = None if act.row_scale else _bias_add(self.graph, self.consumers, out)
            if fold is not None:  # the GEMM adds the bias itself: one pass less
                add, bias, out = fold
                self.new_nodes[add] = []
            self.new_nodes.setdefault(position, []).extend(
                self.matmul(f"{p}{j}_", act, q, s, e, out, bias)
            )

    def splice(self) -> None:
        graph = self.graph
        nodes = [n for i, node in enumerate(graph.node) for n in self.new_nodes.get(i, [node])]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)

    def const(self, name: str, value: npt.ArrayLike, dtype: type[np.generic] = np.float32) -> str:
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def _reduce(self, op: str, x: str, out: str) -> onnx.NodeProto:
        if self.opset >= 18:  # axes moved from attribute to input in opset 18
            return helper.make_node(
                op, [x, self.const(out + "_axes", [-1], np.int64)], [out], name=out, keepdims=1
            )
        return helper.make_node(op, [x], [out], name=out, axes=[-1], keepdims=1)

    def quantize(self, p: str, x: str, plan: Plan) -> _Quantized:
        """static: q = saturate(round(x / scale) + zp), one pass. per-token: the same with a
        scale per row, max(max(x)/(255-zp), -min(x)/zp), or max(x)/(255-zp) alone."""
        nodes = []
        outlier = None
        if plan.outliers:
            outlier = p + "outlier"
            index = self.const(p + "outlier_index", list(plan.outliers), np.int64)
            nodes.append(helper.make_node("Gather", [x, index], [outlier], name=outlier, axis=-1))
        if plan.alpha or plan.outliers:
            inv = 1 / plan.smooth
            inv[list(plan.outliers)] = 0.0  # the int8 path sees the outlier channels as zero
            scaled = self.const(p + "inv_smooth", inv)
            nodes.append(helper.make_node("Mul", [x, scaled], [p + "xs"], name=p + "smooth"))
            x = p + "xs"
        zp = self.const(p + "zp", plan.zero_point, np.uint8)
        if plan.mode == "static":
            scale = self.const(p + "scale", plan.scale)
            nodes.append(
                helper.make_node("QuantizeLinear", [x, scale, zp], [p + "q"], name=p + "q")
            )
            return _Quantized(tuple(nodes), p + "q", scale, zp, None, outlier)
        one = self.const(p + "one", 1.0)
        # eps: an all-zero row must not divide by zero
        scales = [self.const(p + "eps", 1e-12)]
        nodes.append(self._reduce("ReduceMax", x, p + "max"))
        hi = self.const(p + "c_hi", 1 / (255 - plan.zero_point))
        nodes.append(helper.make_node("Mul", [p + "max", hi], [p + "s_hi"], name=p + "s_hi"))
        scales.append(p + "s_hi")
        if plan.mode == "per-token":
            lo = self.const(p + "c_lo", -1 / plan.zero_point)
            nodes.append(self._reduce("ReduceMin", x, p + "min"))
            nodes.append(helper.make_node("Mul", [p + "min", lo], [p + "s_lo"], name=p + "s_lo"))
            scales.append(p + "s_lo")
        nodes += [
            helper.make_node("Max", scales, [p + "s"], name=p + "s"),
            helper.make_node("Reciprocal", [p + "s"], [p + "inv"], name=p + "inv"),
            helper.make_node("Mul", [x, p + "inv"], [p + "xn"], name=p + "xn"),
            # QuantizeLinear takes one scale per tensor (or per channel, but ORT's per-axis
            # kernel is slower than this Mul), so rows are scaled above and scale 1 here just
            # rounds, shifts and saturates.
            helper.make_node("QuantizeLinear", [p + "xn", one, zp], [p + "q"], name=p + "q"),
        ]
        return _Quantized(tuple(nodes), p + "q", one, zp, p + "s", outlier)

    def matmul(
        self, p: str, act: _Quantized, wq: I8, ws: F32, exact: F32, out: str, bias: str = ""
    ) -> list[onnx.NodeProto]:
        """u8 x s8 GEMM with the weight scales (and a bias) fused, then the per-token scale,
        then the outlier channels' fp32 product `act.outlier @ exact` added."""
        w, w_scale = self.const(p + "w", wq, np.int8), self.const(p + "w_scale", ws)
        inputs = [act.q, w, act.scale, w_scale, act.zero_point, "", bias]
        int8_out = out if act.outlier is None else p + "int8"
        if act.row_scale is None:
            nodes = [
                helper.make_node(
                    "MatMulIntegerToFloat", inputs, [int8_out], name=p + "gemm", domain=MS_DOMAIN
                )
            ]
        else:
            nodes = [
                helper.make_node(
                    "MatMulIntegerToFloat", inputs, [p + "acc"], name=p + "gemm", domain=MS_DOMAIN
                ),
                helper.make_node("Mul", [p + "acc", act.row_scale], [int8_out], name=p + "rescale"),
            ]
        if act.outlier is not None:
            w_exact = self.const(p + "w_exact", exact)
            nodes += [
                helper.make_node("MatMul", [act.outlier, w_exact], [p + "fp32"], name=p + "fp32"),
                helper.make_node("Add", [int8_out, p + "fp32"], [out], name=p + "sum"),
            ]
        return nodes
