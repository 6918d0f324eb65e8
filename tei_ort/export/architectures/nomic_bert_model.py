"""Our own PyTorch NomicBERT (model_type nomic_bert: nomic-embed-text-v1 / v1.5), written from the
public architecture (nomic-ai/contrastors, modeling_hf_nomic_bert.py; TEI's candle port) so that
no code from the hub runs. Tensor names, as the checkpoints hold them (NomicBertModel: no prefix;
NomicBertForPreTraining: a "bert." prefix):

  embeddings.word_embeddings, embeddings.token_type_embeddings, emb_ln;
  encoder.layers.N.attn.Wqkv (q, k, v stacked: "(three heads head_dim)"), attn.out_proj,
  encoder.layers.N.mlp.fc11, mlp.fc12, mlp.fc2 (gated) or mlp.fc1, mlp.fc2, norm1, norm2.

Post-norm (prenorm false): h = norm1(x + attn(x)); out = norm2(h + mlp(h)). The gated MLP is
fc2(fc11(x) * act(fc12(x))), act silu for swiglu, gelu for geglu, sigmoid for glu.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tei_ort.errors import UnsupportedModel
from tei_ort.export.architectures import nomic_moe, rotary
from tei_ort.export.architectures.family import MODEL

Activation = Callable[[torch.Tensor], torch.Tensor]
# activation_function -> the gate of fc2(fc11(x) * gate(fc12(x))), as contrastors picks it.
GATES: dict[str, Activation] = {
    "swiglu": nn.functional.silu,
    "geglu": nn.functional.gelu,
    "glu": torch.sigmoid,
}
PLAIN: dict[str, Activation] = {"gelu": nn.functional.gelu}


@dataclass(frozen=True)
class NomicConfig:
    vocab_size: int  # padded to pad_vocab_size_multiple, as the checkpoint's embedding matrix
    n_embd: int
    n_head: int
    n_inner: int
    n_layer: int
    type_vocab_size: int
    layer_norm_epsilon: float
    activation_function: str
    rotary_dim: int
    rotary_emb_base: float
    rotary_emb_interleaved: bool
    qkv_proj_bias: bool
    mlp_fc1_bias: bool
    mlp_fc2_bias: bool
    # nomic-embed-text-v2-moe: layers N with N % moe_every_n_layers == 1 are mixtures of experts
    moe_every_n_layers: int = 0
    num_experts: int = 0
    moe_top_k: int = 0

    def is_moe(self, layer: int) -> bool:
        return self.moe_every_n_layers > 0 and layer % self.moe_every_n_layers == 1

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> NomicConfig:
        activation = str(config.get("activation_function", "swiglu"))
        fraction = float(config.get("rotary_emb_fraction", 0.0))
        head_dim = int(config["n_embd"]) // int(config["n_head"])
        every_n = int(config.get("moe_every_n_layers") or 0)
        refused = {
            "prenorm": bool(config.get("prenorm")),
            "rotary_emb_scale_base": config.get("rotary_emb_scale_base") is not None,
            "rotary_emb_fraction <= 0 (learned positions)": fraction <= 0,
            # megablocks' experts are plain (w1, act, w2) MLPs; a gated activation would not be.
            f"experts with {activation!r}": every_n > 0 and activation not in PLAIN,
            "moe_normalize_expert_weights": bool(config.get("moe_normalize_expert_weights")),
            "parallel_block": bool(config.get("parallel_block")),
            "causal": bool(config.get("causal")),
            f"activation_function {activation!r}": activation not in GATES | PLAIN,
            "type_vocab_size < 1": int(config.get("type_vocab_size", 2)) < 1,
        }
        if any(refused.values()):
            names = ", ".join(name for name, bad in refused.items() if bad)
            raise UnsupportedModel(f"nomic_bert config with {names} is not supported")
        multiple = int(config.get("pad_vocab_size_multiple", 1))
        vocab = int(config["vocab_size"])
        return cls(
            vocab_size=-(-vocab // multiple) * multiple,
            n_embd=int(config["n_embd"]),
            n_head=int(config["n_head"]),
            n_inner=int(config.get("n_inner") or 4 * int(config["n_embd"])),
            n_layer=int(config["n_layer"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-12)),
            activation_function=activation,
            rotary_dim=int(head_dim * fraction),
            rotary_emb_base=float(config.get("rotary_emb_base", 10000.0)),
            rotary_emb_interleaved=bool(config.get("rotary_emb_interleaved", False)),
            qkv_proj_bias=bool(config.get("qkv_proj_bias", True)),
            mlp_fc1_bias=bool(config.get("mlp_fc1_bias", True)),
            mlp_fc2_bias=bool(config.get("mlp_fc2_bias", True)),
            moe_every_n_layers=every_n,
            num_experts=int(config.get("num_experts") or 0),
            moe_top_k=int(config.get("moe_top_k") or 0),
        )


def rotary_cos_sin(
    config: NomicConfig, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:  # each (seq, rotary_dim)
    inv_freq = rotary.inverse_frequencies(config.rotary_dim, config.rotary_emb_base)
    if not config.rotary_emb_interleaved:
        return rotary.cos_sin(inv_freq, seq_len)  # halves: [f0..fn, f0..fn]
    angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = angles.repeat_interleave(2, dim=-1)  # pairs: [f0, f0, f1, f1, ...]
    return angles.cos(), angles.sin()


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """x (batch, heads, seq, head_dim): the first rotary_dim values of each head rotated (GPT-NeoX
    halves, or GPT-J interleaved pairs), the rest passed through (rotary_emb_fraction < 1)."""
    dim = cos.shape[-1]
    rot, rest = x[..., :dim], x[..., dim:]
    if interleaved:
        even, odd = rot[..., 0::2], rot[..., 1::2]
        turned = torch.stack((-odd, even), dim=-1).flatten(-2)
    else:
        first, second = rot.chunk(2, dim=-1)
        turned = torch.cat((-second, first), dim=-1)
    return torch.cat((rot * cos + turned * sin, rest), dim=-1)


class Embeddings(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.n_embd)


class Attention(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.heads = config.n_head
        self.interleaved = config.rotary_emb_interleaved
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_proj_bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_proj_bias)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        batch, seq, hidden = x.shape
        head_dim = hidden // self.heads
        qkv = self.Wqkv(x).view(batch, seq, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rotary(qkv[0], cos, sin, self.interleaved)
        k = apply_rotary(qkv[1], cos, sin, self.interleaved)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask  # (b, heads, s, s)
        context = scores.softmax(dim=-1) @ qkv[2]
        return self.out_proj(context.transpose(1, 2).reshape(batch, seq, hidden))


class GatedMlp(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.fc11 = nn.Linear(config.n_embd, config.n_inner, bias=config.mlp_fc1_bias)
        self.fc12 = nn.Linear(config.n_embd, config.n_inner, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(config.n_inner, config.n_embd, bias=config.mlp_fc2_bias)
        self.gate: Activation = GATES[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc11(x) * self.gate(self.fc12(x)))


class Mlp(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.n_embd, config.n_inner, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(config.n_inner, config.n_embd, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: NomicConfig, moe: bool) -> None:
        super().__init__()
        self.attn = Attention(config)
        self.mlp: nn.Module
        if moe:
            self.mlp = nomic_moe.MoeMlp(
                config.n_embd,
                config.n_inner,
                config.num_experts,
                config.moe_top_k,
                PLAIN[config.activation_function],
            )
        elif config.activation_function in GATES:
            self.mlp = GatedMlp(config)
        else:
            self.mlp = Mlp(config)
        self.norm1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.norm2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        h = self.norm1(x + self.attn(x, mask, cos, sin))
        return self.norm2(h + self.mlp(h))


class Encoder(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config, config.is_moe(i)) for i in range(config.n_layer))


class NomicBertModel(nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state (b, s, hidden)."""

    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.encoder = Encoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        x = self.embeddings.word_embeddings(input_ids)
        # v2-moe has one token type: ids past it (the exporter's dummy input of ones) read row 0
        # like every real input, which is all type 0.
        types = token_type_ids.clamp(max=self.config.type_vocab_size - 1)
        x = self.emb_ln(x + self.embeddings.token_type_embeddings(types))
        cos, sin = rotary_cos_sin(self.config, input_ids.shape[1])  # (seq, rotary_dim)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layers:
            x = layer(x, mask, cos, sin)
        return x


def build(config: dict[str, Any], head: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The bare encoder with the checkpoint's tensors loaded strictly; a pooler (tanh over [CLS],
    used only by contrastors' classifier) and a pre-training head are not part of it."""
    if head != MODEL:
        raise UnsupportedModel(f"nomic_bert exports no {head} head (embeddings only, as TEI)")
    model = NomicBertModel(NomicConfig.from_json(config))
    stripped = {k.removeprefix("bert."): v for k, v in tensors.items()}
    names = {
        k: v for k, v in stripped.items() if k.startswith(("embeddings.", "emb_ln.", "encoder."))
    }
    model.load_state_dict(names, strict=True)
    return model.eval()
