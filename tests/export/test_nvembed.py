"""NV-Embed-v2's network (tei_ort/export/architectures/nvembed_model.py) on a tiny random
checkpoint with NV-Embed-v2's tensor names and config layout (text_config bidir_mistral,
latent_attention_config), against a reference written here from modeling_nvembed.py's equations:
BidirectionalMistralModel (transformers' MistralModel, is_causal False, eager attention with
_prepare_4d_attention_mask's padding mask), LatentAttentionModel (PreNorm cross-attention from
the tokens to the batch-expanded latents through scaled_dot_product_attention, PreNorm GEGLU
feed-forward, both residual) and the mean over pool_mask (the first len(instruction) positions
zeroed, right padding). The hub code itself is not run.

The family is not registered (serving it as the card does needs the EOS appended to every input
and the instruction's tokens left out of the mean, which the runtime does not do): these tests
check the module and its ONNX graph, and that tei-export refuses the architecture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tei_ort.errors import UnsupportedModel
from tei_ort.export import recipes
from tei_ort.export.architectures import nvembed_model, own
from tei_ort.export.architectures.family import MODEL, Family
from tests.export.tiny_jina import randomize

HIDDEN, LATENTS, CROSS_HEADS, VOCAB = 32, 16, 2, 120
TEXT_CONFIG = {
    "model_type": "bidir_mistral",
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "vocab_size": VOCAB,
    # NV-Embed-v2 says 4096; its eager attention never applies it. Shorter than the inputs
    # here, so a module that did would differ.
    "sliding_window": 4,
}
CONFIG = {
    "architectures": ["NVEmbedModel"],
    "model_type": "nvembed",
    "add_eos": True,
    "is_mask_instruction": True,
    "mask_type": "b",
    "padding_side": "right",
    "hidden_size": HIDDEN,
    "text_config": TEXT_CONFIG,
    "latent_attention_config": {
        "model_type": "latent_attention",
        "num_latents_value": LATENTS,
        "num_cross_heads": CROSS_HEADS,
        "cross_dim_head": HIDDEN,  # NV-Embed-v2: 4096, the hidden size, per head
        "hidden_dim": HIDDEN,
        "latent_dim": HIDDEN,
        "output_normalize": True,
    },
}
LENGTHS = [9, 3, 14, 1]  # right padding to 14
INSTRUCTION_TOKENS = 5


def mistral_body() -> torch.nn.Module:
    from transformers import MistralConfig, MistralModel

    fields = {k: v for k, v in TEXT_CONFIG.items() if k != "model_type"}
    config = MistralConfig(**fields)
    config._attn_implementation = "eager"
    model = MistralModel(config).eval()
    randomize(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
    for layer in model.layers:  # BidirectionalMistralModel
        layer.self_attn.is_causal = False
    return model


@pytest.fixture(scope="module")
def checkpoint() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    torch.manual_seed(0)
    body = mistral_body()
    tensors = {"embedding_model." + k: v.clone() for k, v in body.state_dict().items()}
    inner = CROSS_HEADS * HIDDEN
    blocks = "latent_attention_model.cross_attend_blocks."
    shapes = {
        "latent_attention_model.latents": (LATENTS, HIDDEN),
        blocks + "0.fn.to_q.weight": (inner, HIDDEN),
        blocks + "0.fn.to_kv.weight": (2 * inner, HIDDEN),
        blocks + "0.fn.to_out.weight": (HIDDEN, inner),
        blocks + "1.fn.net.0.weight": (HIDDEN * 8, HIDDEN),
        blocks + "1.fn.net.0.bias": (HIDDEN * 8,),
        blocks + "1.fn.net.2.weight": (HIDDEN, HIDDEN * 4),
        blocks + "1.fn.net.2.bias": (HIDDEN,),
    }
    for name, shape in shapes.items():
        scale = 1.0 if name.endswith("latents") else 0.2
        tensors[name] = scale * torch.randn(shape)
    for norm in ("0.norm.", "0.norm_context.", "1.norm."):
        tensors[blocks + norm + "weight"] = 1 + 0.2 * torch.randn(HIDDEN)
        tensors[blocks + norm + "bias"] = 0.1 * torch.randn(HIDDEN)
    return tensors, body


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 2), mask  # padded with </s> (id 2), as NV-Embed does


def reference(
    tensors: dict[str, torch.Tensor],
    body: torch.nn.Module,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pool: torch.Tensor,
) -> torch.Tensor:
    """(b, hidden) as NVEmbedModel.forward computes it, before the card's normalization."""
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

    f = torch.nn.functional
    with torch.no_grad():
        hiddens = body(
            input_ids=ids,
            attention_mask=_prepare_4d_attention_mask(attention_mask, torch.float32),
        ).last_hidden_state  # (b, n, d)
        blocks = "latent_attention_model.cross_attend_blocks."

        def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
            w, b = tensors[blocks + name + "weight"], tensors[blocks + name + "bias"]
            return f.layer_norm(x, (HIDDEN,), w, b)

        x = tensors["latent_attention_model.latents"][None].expand(ids.shape[0], -1, -1)
        # PreNorm(Attention): norm the query side, norm_context the latents.
        q = layer_norm(hiddens, "0.norm.") @ tensors[blocks + "0.fn.to_q.weight"].T
        k, v = (layer_norm(x, "0.norm_context.") @ tensors[blocks + "0.fn.to_kv.weight"].T).chunk(
            2, dim=-1
        )

        def split(t: torch.Tensor) -> torch.Tensor:  # 'b n (h d) -> (b h) n d'
            b, n, _ = t.shape
            return (
                t.reshape(b, n, CROSS_HEADS, -1).permute(0, 2, 1, 3).reshape(b * CROSS_HEADS, n, -1)
            )

        out = f.scaled_dot_product_attention(split(q), split(k), split(v))
        b = ids.shape[0]
        out = (
            out.reshape(b, CROSS_HEADS, -1, HIDDEN)
            .permute(0, 2, 1, 3)
            .reshape(b, -1, CROSS_HEADS * HIDDEN)
        )
        hiddens = out @ tensors[blocks + "0.fn.to_out.weight"].T + hiddens
        # PreNorm(FeedForward): Linear, GEGLU, Linear.
        up = layer_norm(hiddens, "1.norm.") @ tensors[blocks + "1.fn.net.0.weight"].T
        up = up + tensors[blocks + "1.fn.net.0.bias"]
        a, gates = up.chunk(2, dim=-1)
        down = (a * f.gelu(gates)) @ tensors[blocks + "1.fn.net.2.weight"].T
        hiddens = down + tensors[blocks + "1.fn.net.2.bias"] + hiddens
        s = torch.sum(hiddens * pool.unsqueeze(-1).float(), dim=1)
        d = pool.sum(dim=1, keepdim=True).float()
        return s / d


def pool_masks(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Passages: the attention mask. Queries: its first len(tokenize(instruction)) positions
    zeroed, as prepare_kwargs_from_batch does."""
    query = mask.clone()
    query[:, :INSTRUCTION_TOKENS] = 0
    return {"passage": mask, "query": query}


def mean(states: np.ndarray | torch.Tensor, pool: torch.Tensor) -> np.ndarray:
    weights = pool.numpy().astype(np.float32)[..., None]  # (b, n, 1)
    # A row that pools nothing (a query shorter than its instruction) gives 0; callers skip it.
    return (np.asarray(states) * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)


@pytest.mark.parametrize("kind", ["passage", "query"])
def test_module_equals_the_hub_equations(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module], kind: str
) -> None:
    tensors, body = checkpoint
    module = nvembed_model.build(json.loads(json.dumps(CONFIG)), MODEL, tensors)
    ids, mask = batch()
    pool = pool_masks(mask)[kind]
    rows = pool.sum(1) > 0  # a query shorter than its instruction pools nothing
    with torch.no_grad():
        states = module(ids, mask)  # (b, n, d)
    want = reference(tensors, body, ids, mask, pool)[rows].numpy()
    got = mean(states, pool)[rows.numpy()]
    assert got.shape == (int(rows.sum()), HIDDEN)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_every_token_attends_both_ways_without_a_window(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module],
) -> None:
    """Changing the last of 14 tokens changes the first token's state: bidirectional, and no
    window of 4 (the config's sliding_window) between them."""
    tensors, _ = checkpoint
    module = nvembed_model.build(json.loads(json.dumps(CONFIG)), MODEL, tensors)
    ids, mask = batch()
    changed = ids.clone()
    changed[2, 13] = (ids[2, 13] + 1) % VOCAB
    with torch.no_grad():
        before, after = module(ids, mask)[2, 0], module(changed, mask)[2, 0]
    assert float((before - after).abs().max()) > 1e-4


def test_onnx_graph_equals_the_module(
    checkpoint: tuple[dict[str, torch.Tensor], torch.nn.Module], tmp_path: Path
) -> None:
    """The module through the own-module exporter (both axes dynamic: traced at (2, 16), run at
    (4, 14)) in ONNX Runtime, mean-pooled, equals the reference."""
    import onnxruntime as ort
    from safetensors.torch import save_file

    tensors, body = checkpoint
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    family = Family(
        "nvembed",
        "NVEmbed",
        uses_token_type_ids=False,
        position_offset=0,
        fusion_model_type="bert",
        heads=(MODEL,),
        own_module=nvembed_model.__name__,
    )
    recipe = recipes.Recipe("NVEmbedModel", family, recipes.BASE)
    own.export(tmp_path, recipe, tmp_path / "model.onnx", opset=17)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = batch()
    (states,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert states.shape == (len(LENGTHS), max(LENGTHS), HIDDEN)
    pool = pool_masks(mask)["passage"]
    np.testing.assert_allclose(
        mean(states, pool), reference(tensors, body, ids, mask, pool).numpy(), atol=2e-5, rtol=0
    )


def test_not_exported_until_the_runtime_masks_the_instruction() -> None:
    with pytest.raises(UnsupportedModel, match="NVEmbedModel"):
        recipes.lookup("NVEmbedModel")
