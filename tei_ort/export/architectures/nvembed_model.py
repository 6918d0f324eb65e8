"""NV-Embed-v2's network (config model_type "nvembed", NVEmbedModel), built from its checkpoint
tensors without its hub code: a Mistral body with bidirectional attention, then the latent
attention layer, applied token by token.

Written from the public modeling_nvembed.py (read, never run):
- embedding_model.*: MistralModel with is_causal False and transformers' eager 4-D padding mask
  (_prepare_4d_attention_mask): every real token attends to every real token; the eager path
  applies no sliding window, so none here either (decoder_model.DecoderEncoder, bidirectional).
- latent_attention_model.*: with h the body's states (b, s, d) and L the trained latents (r, d),
      x = h + to_out(softmax(q k^T / sqrt(dh)) v),  q = to_q(LN(h)),  k, v = to_kv(LN_ctx(L))
  (heads of dh = cross_dim_head; the tokens query the latents, so no mask is needed), then
      y = x + W2 (a * gelu(g)) + b2,  (a, g) = chunks of W1 LN_ff(x) + b1  (GEGLU, 4x width).
- the sentence vector is the mean of y over `pool_mask`: the attention mask with its first
  len(tokenize(instruction)) positions zeroed (is_mask_instruction, right padding), after the
  input text had the EOS appended; the card then L2-normalizes.

The module here ends at y (batch, seq, hidden), like every embedding graph; the mean pooling
over the non-instruction tokens is the runtime's (1_Pooling's include_prompt false: the prompt's
tokens counted as sentence-transformers counts them, <s> and the instruction), and the EOS is
appended by the package's tokenizer template (special_tokens.ALWAYS_EOS_MODEL_TYPES). The family
is registered in decoders.FAMILIES.

Own module protocol (tei_ort.export.architectures.own): build(config, head, tensors)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tei_ort.errors import UnsupportedModel
from tei_ort.export.architectures import decoder_model

BODY, LATENT = "embedding_model.", "latent_attention_model."
BLOCKS = LATENT + "cross_attend_blocks."
# text_config's model type in NV-Embed checkpoints; transformers knows it as Mistral.
TEXT_MODEL_TYPES = {"bidir_mistral": "mistral"}


class LatentAttention(nn.Module):
    """forward(hidden (b, s, d)) -> (b, s, d): the cross-attention to the latents and the GEGLU
    feed-forward, each pre-normed and residual."""

    def __init__(self, tensors: dict[str, torch.Tensor], heads: int):
        super().__init__()
        latents = tensors[LATENT + "latents"].float()  # (r, d)
        dim = latents.shape[1]
        self.heads = heads
        self.norm = _layer_norm(tensors, BLOCKS + "0.norm.", dim)
        self.norm_context = _layer_norm(tensors, BLOCKS + "0.norm_context.", dim)
        self.to_q = _linear(tensors, BLOCKS + "0.fn.to_q.")
        self.to_kv = _linear(tensors, BLOCKS + "0.fn.to_kv.")
        self.to_out = _linear(tensors, BLOCKS + "0.fn.to_out.")
        self.ff_norm = _layer_norm(tensors, BLOCKS + "1.norm.", dim)
        self.ff_in = _linear(tensors, BLOCKS + "1.fn.net.0.")
        self.ff_out = _linear(tensors, BLOCKS + "1.fn.net.2.")
        self.latents = nn.Parameter(latents, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        # The latents are the same for every row: keys and values are (heads, r, dh) constants,
        # which the ONNX export folds.
        context = self.norm_context(self.latents)  # (r, d)
        keys, values = self.to_kv(context).chunk(2, dim=-1)  # (r, heads * dh) each
        head_dim = keys.shape[-1] // self.heads
        keys = keys.reshape(-1, self.heads, head_dim).transpose(0, 1)  # (heads, r, dh)
        values = values.reshape(-1, self.heads, head_dim).transpose(0, 1)  # (heads, r, dh)
        query = self.to_q(self.norm(hidden))  # (b, s, heads * dh)
        query = query.reshape(batch, seq, self.heads, head_dim).transpose(1, 2)  # (b, h, s, dh)
        scores = query @ keys.transpose(-1, -2) / head_dim**0.5  # (b, h, s, r)
        attended = scores.softmax(-1) @ values  # (b, h, s, dh)
        attended = attended.transpose(1, 2).reshape(batch, seq, self.heads * head_dim)
        x = self.to_out(attended) + hidden  # (b, s, d)
        a, gate = self.ff_in(self.ff_norm(x)).chunk(2, dim=-1)  # (b, s, 4d) each
        out: torch.Tensor = self.ff_out(a * nn.functional.gelu(gate)) + x  # (b, s, d)
        return out


class NVEmbed(nn.Module):
    """forward(input_ids (b, s), attention_mask (b, s)) -> per-token states (b, s, d) after the
    latent attention; their mean over the pooled tokens is the sentence vector."""

    def __init__(self, body: nn.Module, latent: LatentAttention):
        super().__init__()
        self.body = body
        self.latent = latent

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids, attention_mask)  # (batch, seq, hidden)
        out: torch.Tensor = self.latent(hidden)
        return out


def build(config: dict[str, Any], head: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    if head != "Model":
        raise UnsupportedModel("nvembed: only the embedding model is exported")
    text = dict(config.get("text_config") or {})
    latent = config.get("latent_attention_config") or {}
    text_type = str(text.get("model_type"))
    if text_type not in TEXT_MODEL_TYPES or "num_cross_heads" not in latent:
        raise UnsupportedModel(
            "nvembed: needs text_config (model_type bidir_mistral) and latent_attention_config"
        )
    # Bidirectional and no window: BidirectionalMistralModel's eager attention.
    text |= {
        "model_type": TEXT_MODEL_TYPES[text_type],
        "use_bidirectional_attention": True,
        "sliding_window": None,
    }
    body_tensors = {k.removeprefix(BODY): v for k, v in tensors.items() if k.startswith(BODY)}
    body = decoder_model.build(text, "Model", body_tensors)
    return NVEmbed(body, LatentAttention(tensors, int(latent["num_cross_heads"]))).eval()


def _linear(tensors: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    weight = tensors[prefix + "weight"].float()  # (out, in)
    bias = tensors.get(prefix + "bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.float(), requires_grad=False)
    return layer


def _layer_norm(tensors: dict[str, torch.Tensor], prefix: str, dim: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(dim)  # eps 1e-5, torch's default, as in the hub code
    norm.weight = nn.Parameter(tensors[prefix + "weight"].float(), requires_grad=False)
    norm.bias = nn.Parameter(tensors[prefix + "bias"].float(), requires_grad=False)
    return norm
