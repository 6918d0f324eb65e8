"""Our own PyTorch GTE (model_type new), written from the public architecture (TEI's candle port
and the GTE v1.5 / mGTE papers) so that no code from the hub runs. Tensor names, as the
checkpoints hold them (an optional "new." prefix):

  embeddings.word_embeddings, embeddings.token_type_embeddings (type_vocab_size > 0),
  embeddings.LayerNorm;
  encoder.layer.N.attention.qkv_proj, attention.o_proj, attn_ln,
  encoder.layer.N.mlp.up_gate_proj (no bias: up, then gate), mlp.down_proj, mlp_ln;
  classifiers: pooler.dense (optional, tanh over [CLS]) and classifier.

Each layer: h = attn_ln(x + attention(x)); out = mlp_ln(h + down(act(gate(h)) * up(h))).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tei_ort.errors import UnsupportedModel
from tei_ort.export.architectures import rotary
from tei_ort.export.architectures.family import MODEL, SEQUENCE_CLASSIFICATION


@dataclass(frozen=True)
class GteConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    rope_theta: float
    ntk_factor: float | None  # rope_scaling {"type": "ntk", "factor": f}
    num_labels: int

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> GteConfig:
        refused = {
            "position_embedding_type": config.get("position_embedding_type", "rope") != "rope",
            "layer_norm_type": config.get("layer_norm_type", "layer_norm") != "layer_norm",
            "logn_attention_scale": bool(config.get("logn_attention_scale")),
            "logn_attention_clip1": bool(config.get("logn_attention_clip1")),
            "type_vocab_size > 1": int(config.get("type_vocab_size", 0)) > 1,
        }
        if any(refused.values()):
            names = ", ".join(name for name, bad in refused.items() if bad)
            raise UnsupportedModel(f"GTE config with {names} is not supported")
        scaling = config.get("rope_scaling") or None
        if scaling is not None and scaling.get("type") != "ntk":
            raise UnsupportedModel(f"GTE rope_scaling {scaling!r}: only ntk is supported")
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            type_vocab_size=int(config.get("type_vocab_size", 0)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(config.get("hidden_act", "gelu")),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            ntk_factor=float(scaling["factor"]) if scaling is not None else None,
            num_labels=len(config.get("id2label") or {}) or int(config.get("num_labels", 2)),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def inverse_frequencies(self) -> torch.Tensor:
        if self.ntk_factor is None:
            return rotary.inverse_frequencies(self.head_dim, self.rope_theta)
        return rotary.ntk_inverse_frequencies(self.head_dim, self.rope_theta, self.ntk_factor)


class Embeddings(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size)
            if config.type_vocab_size > 0
            else None
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:  # type 0 everywhere (type_vocab_size 1)
            x = x + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)  # (batch, seq, hidden)


class Attention(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        batch, seq, hidden = x.shape
        head_dim = hidden // self.heads
        qkv = self.qkv_proj(x).view(batch, seq, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = rotary.rotate(qkv[0], cos, sin), rotary.rotate(qkv[1], cos, sin), qkv[2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask  # (b, heads, s, s)
        context = scores.softmax(dim=-1) @ v
        return self.o_proj(context.transpose(1, 2).reshape(batch, seq, hidden))


class Mlp(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.up_gate_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.up_gate_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class Layer(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.attn_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.mlp_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        h = self.attn_ln(x + self.attention(x, mask, cos, sin))
        return self.mlp_ln(h + self.mlp(h))


class Encoder(nn.Module):
    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class NewModel(nn.Module):
    """forward(input_ids, attention_mask) -> last_hidden_state (batch, seq, hidden)."""

    inv_freq: torch.Tensor  # (head_dim / 2,), a buffer

    def __init__(self, config: GteConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.register_buffer("inv_freq", config.inverse_frequencies(), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        cos, sin = rotary.cos_sin(self.inv_freq, input_ids.shape[1])  # (seq, head_dim)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, mask, cos, sin)
        return x


class Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class NewForSequenceClassification(nn.Module):
    """[CLS] -> optional tanh pooler -> classifier -> logits (batch, labels)."""

    def __init__(self, config: GteConfig, pooler: bool) -> None:
        super().__init__()
        self.new = NewModel(config)
        self.pooler = Pooler(config.hidden_size) if pooler else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cls = self.new(input_ids, attention_mask)[:, 0]
        if self.pooler is not None:
            cls = torch.tanh(self.pooler.dense(cls))
        return self.classifier(cls)


def build(config: dict[str, Any], head: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The model for `head` with the checkpoint's tensors loaded strictly (the bare encoder reads
    the embeddings and encoder tensors; a classifier every tensor)."""
    parsed = GteConfig.from_json(config)
    stripped = {k.removeprefix("new."): v for k, v in tensors.items()}
    model: nn.Module
    if head == MODEL:
        model = NewModel(parsed)
        names = {k: v for k, v in stripped.items() if k.startswith(("embeddings.", "encoder."))}
    elif head == SEQUENCE_CLASSIFICATION:
        model = NewForSequenceClassification(parsed, pooler="pooler.dense.weight" in stripped)
        names = {
            (k if k.startswith(("pooler.", "classifier.")) else "new." + k): v
            for k, v in stripped.items()
        }
    else:
        raise UnsupportedModel(f"GTE exports no {head} head")
    model.load_state_dict(names, strict=True)
    return model.eval()
