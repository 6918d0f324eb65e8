"""Our own PyTorch JinaBERT v2, written from the public architecture (the Jina Embeddings 2 paper,
arXiv:2310.19923, and TEI's candle port) so that no code from the hub runs. It reads the
checkpoint's own tensor names:

  embeddings.{word,token_type}_embeddings, embeddings.LayerNorm (position_embeddings only when
  position_embedding_type is absolute);
  encoder.layer.N.attention.self.{query,key,value}, attention.output.{dense,LayerNorm};
  v2:   mlp.gated_layers (no bias), mlp.wo, mlp.layernorm            (post-norm, residual inside)
  code: attention.self.layer_norm_{q,k}, layer_norm_1, mlp.up_gated_layer (no bias),
        mlp.down_layer, layer_norm_2                                  (qk post-norm variant)
  feed_forward_type "original": intermediate.dense, output.{dense,LayerNorm} (BERT's MLP);
  pooler.dense and classifier for the sequence classifier; "bert." prefixes are accepted.

Attention adds ALiBi's symmetric bias -slope_h * |i - j| to the scaled scores, so the model has
no position limit of its own; max_position_embeddings (8,192) bounds the input as TEI reads it.

Memory: attention runs in blocks of QUERY_BLOCK query rows, each block building its own bias from
positions, so no (heads, n, n) tensor exists (3.2 GB in fp32 at 12 heads and 8,192 tokens, and
the graph held several); a block's scores are (batch, heads, 512, n). The traced graph cannot
loop over a data-dependent number of blocks, so it is unrolled over the blocks that
max_position_embeddings needs: a block past the input's length is an empty Slice, whose nodes
run on zero-sized tensors (a few microseconds each), and the last block takes every row left,
so a longer input still runs (with a larger last block). Softmax is per query row, so blocks
change no value beyond the matrix products' rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tei_ort.errors import UnsupportedModel
from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION

QK_POST_NORM_REPO = "jina-bert-v2-qk-post-norm"  # auto_map names it for the code variant
FEED_FORWARD_TYPES = ("geglu", "reglu", "original")
# Query rows per attention block: (heads, 512, 8,192) fp32 is 200 MB at 12 heads. 128-token
# batches run in one block, as the single-block graph did.
QUERY_BLOCK = 512


@dataclass(frozen=True)
class JinaBertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    hidden_act: str
    alibi: bool  # position_embedding_type == "alibi"; otherwise absolute position embeddings
    feed_forward_type: str  # geglu (GELU gate), reglu (ReLU gate), original (BERT's MLP)
    qk_post_norm: bool  # the code variant
    num_labels: int

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> JinaBertConfig:
        position_type = config.get("position_embedding_type", "absolute")
        if position_type not in ("alibi", "absolute"):
            raise UnsupportedModel(f"JinaBERT position_embedding_type {position_type!r}")
        feed_forward = str(config.get("feed_forward_type", "original"))
        if feed_forward not in FEED_FORWARD_TYPES:
            raise UnsupportedModel(
                f"JinaBERT feed_forward_type {feed_forward!r}; supported: {FEED_FORWARD_TYPES}"
            )
        auto_map = config.get("auto_map") or {}
        references = [str(v) for v in auto_map.values()] + [str(config.get("_name_or_path", ""))]
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            max_position_embeddings=int(config["max_position_embeddings"]),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(config.get("hidden_act", "gelu")),
            alibi=position_type == "alibi",
            feed_forward_type=feed_forward,
            qk_post_norm=any(QK_POST_NORM_REPO in r for r in references),
            num_labels=len(config.get("id2label") or {}) or int(config.get("num_labels", 2)),
        )


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi's head slopes (Press et al.): for n a power of two, 2^(-8i/n) for i = 1..n; otherwise
    the slopes of the power of two below n, then every other slope of twice that power."""
    if math.log2(num_heads).is_integer():
        return [2 ** (-8 * i / num_heads) for i in range(1, num_heads + 1)]
    lower = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(lower) + alibi_slopes(2 * lower)[0::2][: num_heads - lower]


def alibi_bias(slopes: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(heads, queries, keys) symmetric bias -slope_h * |i - j| for query positions i and key
    positions j, built from positions so the exported graph keeps a dynamic sequence axis."""
    distance = (keys[None, :] - queries[:, None]).abs().to(slopes.dtype)  # (queries, keys)
    return -slopes[:, None, None] * distance


def query_blocks(seq_len: int, max_positions: int) -> list[slice]:
    """The query rows of each attention block. Eager: the blocks the input fills. Exporting: every
    block up to max_positions (the trace cannot depend on the length), the last one open-ended;
    a block past the traced input's length is empty in the graph."""
    limit = max_positions if torch.onnx.is_in_onnx_export() else seq_len
    starts = list(range(0, max(limit, 1), QUERY_BLOCK))
    return [slice(s, s + QUERY_BLOCK) for s in starts[:-1]] + [slice(starts[-1], None)]


def _activation(name: str) -> nn.Module:
    from transformers.activations import ACT2FN

    module = ACT2FN[name]
    assert isinstance(module, nn.Module)
    return module


class Embeddings(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.position_embeddings = (
            None
            if config.alibi
            else nn.Embedding(config.max_position_embeddings, config.hidden_size)
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = x + self.position_embeddings(positions)[None]
        return self.LayerNorm(x)  # (batch, seq, hidden)


@dataclass(frozen=True)
class AttentionBias:
    """What each attention block builds its bias from: padding (batch, 1, 1, seq) of 0 or the
    dtype's lowest value, ALiBi slopes (heads,) or None, the query blocks."""

    padding: torch.Tensor
    slopes: torch.Tensor | None
    blocks: list[slice]

    def block(self, rows: slice, positions: torch.Tensor) -> torch.Tensor:
        """(batch, heads or 1, rows, seq): padding plus ALiBi for the block's query rows."""
        if self.slopes is None:
            return self.padding
        return self.padding + alibi_bias(self.slopes, positions[rows], positions)[None]


class SelfAttention(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        if config.qk_post_norm:  # LayerNorm over all heads of q and k, after the projection
            self.layer_norm_q = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
            self.layer_norm_k = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.qk_post_norm = config.qk_post_norm

    def forward(self, x: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        batch, seq, hidden = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.qk_post_norm:
            q, k = self.layer_norm_q(q), self.layer_norm_k(k)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (batch, heads, seq, head_dim)
            return t.view(batch, seq, self.heads, hidden // self.heads).transpose(1, 2)

        q, keys, v = heads(q), heads(k).transpose(-1, -2), heads(v)
        scale = math.sqrt(hidden // self.heads)
        # Positions from this layer's own input: built from the model's input, every layer's
        # blocks would be the same nodes, which the exporter and ORT merge (common
        # subexpressions) into one set computed in the first layer and held through the last,
        # (heads, seq, seq) in all again.
        positions = torch.arange(seq, device=x.device)  # (seq,)
        contexts = []
        for rows in bias.blocks:  # scores (batch, heads, rows, seq), never (.., seq, seq)
            scores = q[:, :, rows] @ keys / scale + bias.block(rows, positions)
            contexts.append(scores.softmax(dim=-1) @ v)  # (batch, heads, rows, head_dim)
        context = torch.cat(contexts, dim=2)  # (batch, heads, seq, head_dim)
        return context.transpose(1, 2).reshape(batch, seq, hidden)


class Attention(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = _DenseNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _DenseNorm(nn.Module):
    """dense, then LayerNorm of (its output + residual): BERT's SelfOutput / Output."""

    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class GluMlp(nn.Module):
    """v2: act(first half) * second half of gated_layers, then wo, then layernorm(+ residual)."""

    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = _activation("relu" if config.feed_forward_type == "reglu" else config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated, non_gated = self.gated_layers(x).chunk(2, dim=-1)
        return self.layernorm(self.wo(self.act(gated) * non_gated) + x)


class CodeGluMlp(nn.Module):
    """qk-post-norm variant: first half * act(second half) of up_gated_layer, then down_layer;
    the layer norms around it belong to the layer."""

    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.up_gated_layer = nn.Linear(
            config.hidden_size, 2 * config.intermediate_size, bias=False
        )
        self.down_layer = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation("relu" if config.feed_forward_type == "reglu" else config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.up_gated_layer(x).chunk(2, dim=-1)
        return self.down_layer(up * self.act(gate))


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)


class Layer(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.kind = "code" if config.qk_post_norm else config.feed_forward_type
        if self.kind == "code":
            self.layer_norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.mlp: nn.Module = CodeGluMlp(config)
            self.layer_norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        elif self.kind == "original":
            self.intermediate = _Intermediate(config.hidden_size, config.intermediate_size)
            self.act = _activation(config.hidden_act)
            self.output = _DenseNorm(
                config.intermediate_size, config.hidden_size, config.layer_norm_eps
            )
        else:
            self.mlp = GluMlp(config)

    def forward(self, x: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        attended = self.attention(x, bias)
        if self.kind == "code":
            h = self.layer_norm_1(attended + x)
            return self.layer_norm_2(self.mlp(h) + h)
        if self.kind == "original":
            return self.output(self.act(self.intermediate.dense(attended)), attended)
        return self.mlp(attended)


class Encoder(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, bias: AttentionBias) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class JinaBertModel(nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state (b, s, hidden)."""

    slopes: torch.Tensor  # (heads,) ALiBi slopes, a buffer

    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        slopes = torch.tensor(alibi_slopes(config.num_attention_heads), dtype=torch.float32)
        self.register_buffer("slopes", slopes, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        # Padding keys get the dtype's lowest value, as transformers' BERT masks them.
        padding = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        bias = AttentionBias(
            padding=padding,  # (batch, 1, 1, seq)
            slopes=self.slopes if self.config.alibi else None,
            blocks=query_blocks(input_ids.shape[1], self.config.max_position_embeddings),
        )
        return self.encoder(x, bias)


class Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))  # the [CLS] token


class JinaBertForSequenceClassification(nn.Module):
    """BERT's classifier: tanh pooler over [CLS], then a linear layer -> logits (b, labels)."""

    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.bert = JinaBertModel(config)
        self.pooler = Pooler(config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.pooler(hidden))


def build(config: dict[str, Any], head: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The model for `head` with the checkpoint's tensors loaded (strict: every tensor the model
    needs must be there, and a classifier uses every tensor but the MLM head's; the bare encoder
    reads the embeddings and encoder tensors)."""
    parsed = JinaBertConfig.from_json(config)
    model: nn.Module
    if head == MODEL:
        model = JinaBertModel(parsed)
        names = {_encoder_name(k): v for k, v in tensors.items() if _is_encoder(k)}
    elif head == SEQUENCE_CLASSIFICATION:
        model = JinaBertForSequenceClassification(parsed)
        names = {_classifier_name(k): v for k, v in tensors.items() if not _is_mlm(k)}
    else:
        raise UnsupportedModel(f"JinaBERT exports no {head} head")
    model.load_state_dict(names, strict=True)
    return model.eval()


def _is_mlm(key: str) -> bool:
    return key.startswith("cls.")


def _is_encoder(key: str) -> bool:
    stripped = key.removeprefix("bert.")
    return stripped.startswith(("embeddings.", "encoder."))


def _encoder_name(key: str) -> str:
    return key.removeprefix("bert.")


def _classifier_name(key: str) -> str:
    """Checkpoint name -> our classifier's: bert.pooler.* -> pooler.*, bert.X / X -> bert.X."""
    stripped = key.removeprefix("bert.")
    if stripped.startswith("pooler.") or stripped.startswith("classifier."):
        return stripped
    return "bert." + stripped
