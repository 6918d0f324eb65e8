"""Decoder-style embedders (Qwen3, Qwen2, Mistral, Llama, Gemma3 text) as encoders: transformers'
own bare model class (the checkpoint's config and tensors), run without a KV cache, with the
attention mask built here rather than by transformers.

Why not optimum's decoder export: its feature-extraction graph takes position_ids as a third input
and traces transformers' mask code, which bakes shapes in. Here the graph takes (input_ids,
attention_mask) like every other package graph, and the mask is plain tensor arithmetic on the
dynamic sequence axis:

- positions are 0..n-1 for each input: the runtime pads on the right, so a real token's position
  equals its unpadded one (rotary attention depends only on position differences, so a
  left-padded reference gives the same vectors);
- causal models keep j <= i, bidirectional ones (EmbeddingGemma, NVIDIA's Llama) every j; a
  sliding window keeps |i - j| < window; padding keys are never attended to.

Own module protocol (tei_ort.export.architectures.own): build(config, head, tensors)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tei_ort.errors import UnsupportedModel

# Checkpoints saved from the causal LM class prefix the bare model's tensors with "model."
# (Qwen3-Embedding's own safetensors hold the bare names).
_PREFIX = "model."
# Heads are not part of the encoder: the LM head, and the score Linear of sequence classifiers
# (decoder_score.py builds that one on top).
_HEADS = ("lm_head.", "score.")
FULL, SLIDING = "full_attention", "sliding_attention"
# Model types transformers does not know, built as the one they extend (the checkpoint's own
# modelling code on the hub is never run).
CONFIG_MODEL_TYPES = {"llama_bidirec": "llama"}
# Trained with bidirectional attention whatever their config says about it.
BIDIRECTIONAL_MODEL_TYPES = frozenset({"llama_bidirec"})


class DecoderEncoder(nn.Module):
    """forward(input_ids (b, s), attention_mask (b, s)) -> last_hidden_state (b, s, hidden)."""

    def __init__(self, model: nn.Module, *, causal: bool, window: int | None, per_layer: bool):
        super().__init__()
        self.model = model
        self.causal = causal
        self.window = window
        # Models with layer_types (Qwen2/3, Gemma3) take one mask per attention type.
        self.per_layer = per_layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        index = torch.ones_like(attention_mask[0]).cumsum(0) - 1  # (seq,) 0..s-1, traced dynamic
        positions = index[None, :].expand_as(input_ids)  # (batch, seq)
        distance = index[:, None] - index[None, :]  # (seq_q, seq_k): i - j
        keys = attention_mask[:, None, None, :].bool()  # (batch, 1, 1, seq_k)
        full = keys & (distance >= 0) if self.causal else keys  # (batch, 1, seq_q, seq_k)
        masks = {FULL: _additive(full)}
        if self.window is not None:
            near = distance.abs() < self.window
            masks[SLIDING] = _additive(full & near)
        mask: Any = masks if self.per_layer else masks.get(SLIDING, masks[FULL])
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False
        )
        hidden: torch.Tensor = out.last_hidden_state  # (batch, seq, hidden)
        return hidden


def _additive(keep: torch.Tensor) -> torch.Tensor:
    """bool (batch, 1, q, k) -> 0 where attended, the float32 minimum elsewhere (as transformers'
    eager masks)."""
    blocked = torch.tensor(torch.finfo(torch.float32).min, dtype=torch.float32)
    return torch.where(keep, torch.tensor(0.0, dtype=torch.float32), blocked)


def hf_config(config: dict[str, Any]) -> Any:
    """transformers' config class for the model type, from config.json's fields, eager attention
    (the one implementation that takes our float masks as given and traces to plain ops)."""
    from transformers import AutoConfig

    fields = {
        k: v
        for k, v in config.items()
        if k not in ("auto_map", "architectures", "model_type") and not k.startswith("_")
    }
    model_type = str(config.get("model_type"))
    parsed = AutoConfig.for_model(CONFIG_MODEL_TYPES.get(model_type, model_type), **fields)
    parsed._attn_implementation = "eager"
    parsed.use_cache = False
    return parsed


def is_causal(config: dict[str, Any]) -> bool:
    """Gemma3's use_bidirectional_attention (EmbeddingGemma) and NVIDIA's LlamaBidirectionalModel
    attend both ways; every other decoder checkpoint here was trained causal."""
    if config.get("model_type") in BIDIRECTIONAL_MODEL_TYPES:
        return False
    return not config.get("use_bidirectional_attention")


def sliding_window(parsed: Any) -> int | None:
    """The window, when some layer uses one: Gemma3 (sliding layers), Mistral (every layer),
    Qwen2/3 with use_sliding_window."""
    window = getattr(parsed, "sliding_window", None)
    layer_types = getattr(parsed, "layer_types", None)
    if window is None or (layer_types is not None and SLIDING not in layer_types):
        return None
    return int(window)


class YesNoScorer(nn.Module):
    """An LLM re-ranker's head (tei_ort.export.architectures.llm_rerank): the last real token's
    hidden state times (lm_head[yes] - lm_head[no]) -> (batch, 1) logit(yes) - logit(no)."""

    def __init__(self, encoder: DecoderEncoder, rows: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("direction", (rows[0] - rows[1])[:, None])  # (hidden, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (batch, seq, hidden)
        last = attention_mask.sum(1) - 1  # (batch,): right padding
        index = last[:, None, None].expand(-1, 1, hidden.shape[-1])  # (batch, 1, hidden)
        token = hidden.gather(1, index)[:, 0]  # (batch, hidden)
        logits: torch.Tensor = token @ self.direction  # (batch, 1)
        return logits


def build(config: dict[str, Any], head: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    from transformers import AutoModel

    from tei_ort.export.architectures import decoder_score, llm_rerank

    template = llm_rerank.TEMPLATES.get(str((config.get("architectures") or [""])[0]))
    scored = decoder_score.SCORE in tensors  # *ForSequenceClassification checkpoints
    if head != "Model" and not scored and template is None:
        raise UnsupportedModel(
            f"{config.get('model_type')}: a classifier or re-ranker needs a score head "
            f"({decoder_score.SCORE}) or is an LLM re-ranker ({', '.join(llm_rerank.TEMPLATES)})"
        )
    from transformers.modeling_utils import no_init_weights

    parsed = hf_config(config)
    # Memory: without random init the new parameters are untouched (never resident) pages, and
    # assign=True makes the checkpoint's tensors the parameters rather than copying them in, so
    # the model costs one copy of its weights, not two (a 1.5B model: 6 GB instead of 12).
    with no_init_weights():
        model = AutoModel.from_config(parsed, attn_implementation="eager")  # type: ignore[no-untyped-call]
    # assign keeps a tensor's dtype: a bfloat16 checkpoint's tensors become the float32 the
    # model was built in (load_state_dict's copy converted them).
    dtypes = {name: value.dtype for name, value in model.state_dict().items()}
    state = {
        name.removeprefix(_PREFIX): tensor.to(dtypes.get(name.removeprefix(_PREFIX), tensor.dtype))
        for name, tensor in tensors.items()
        if not name.startswith(_HEADS)
    }
    model.load_state_dict(state, strict=True, assign=True)
    per_layer = getattr(parsed, "layer_types", None) is not None
    encoder = DecoderEncoder(
        model, causal=is_causal(config), window=sliding_window(parsed), per_layer=per_layer
    )
    if head == "Model":
        return encoder.eval()
    if scored:
        weight = decoder_score.score_weight(config, tensors)
        return decoder_score.LastTokenScore(
            encoder, weight, decoder_score.pad_token_id(config)
        ).eval()
    assert template is not None  # refused above otherwise
    tokenizer_file = str(config[llm_rerank.MODEL_DIR_KEY]) + "/tokenizer.json"
    return YesNoScorer(encoder, llm_rerank.yes_no_rows(tensors, tokenizer_file, template)).eval()
