"""GTE (model_type new), exported from our own module (tei_ort/export/architectures/gte_model.py)
without running the hub's code.

Checked independently: the rotary embedding equals transformers' LLaMA rotary on the same
frequencies, NTK-scaled frequencies equal the formula worked by hand, the GeGLU MLP equals
transformers' LlamaMLP on the same weights, the tensor names are the real checkpoints'. Not
independently: the whole layer (post-norm residual order follows TEI's candle port) and real GTE
weights (none install from PyPI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tei_ort.export.architectures import gte_model, rotary
from tei_ort.runtime import Model, RuntimeOptions
from tests.export import family_checks, tiny_gte
from tests.export.conftest import TinyPackage, TinySource

HEADS = ("embedding", "classification", "reranker")


@pytest.mark.parametrize("head", HEADS)
def test_fp32_validated(tiny_package: TinyPackage, head: str) -> None:
    family_checks.check_fp32_validated(tiny_package, "gte", head)
    manifest = tiny_package("gte", head).manifest
    assert manifest.model_type == "new" and not manifest.uses_token_type_ids


@pytest.mark.parametrize("head", HEADS)
def test_runtime_matches_own_module(
    tiny_package: TinyPackage, tiny_source: TinySource, head: str
) -> None:
    family_checks.check_runtime_matches(
        tiny_package, tiny_source, "gte", head, family_checks.own_module_forward
    )


@pytest.mark.parametrize("head", HEADS)
def test_batch_invariance(tiny_package: TinyPackage, head: str) -> None:
    family_checks.check_batch_invariance(tiny_package, "gte", head)


def test_long_input(tiny_package: TinyPackage, tiny_source: TinySource) -> None:
    """8,192 positions from the config; a ~1,600-token input alone, beside a short one, and in
    PyTorch agree."""
    package = tiny_package("gte", "classification")
    assert package.manifest.max_input_length == tiny_gte.MAX_POSITIONS
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    long_text = "The import statement combines two operations. " * 200
    alone = model.predict([long_text], raw_scores=True)
    np.testing.assert_allclose(
        alone[0], model.predict([long_text, "x"], raw_scores=True)[0], atol=1e-5, rtol=0
    )
    want = family_checks.own_module_forward(
        tiny_source("gte", "classification"), "classification", [long_text]
    )
    np.testing.assert_allclose(alone, want, atol=1e-4, rtol=0)


def test_hub_code_in_the_folder_is_never_imported(tiny_source: TinySource, tmp_path: Path) -> None:
    family_checks.check_hub_code_never_runs(tiny_source("gte", "embedding"), tmp_path)


def test_checkpoint_tensor_names_are_the_real_ones(tiny_source: TinySource) -> None:
    names = set(load_file(str(tiny_source("gte", "embedding") / "model.safetensors")))
    assert {n.removeprefix("encoder.layer.0.") for n in names if ".layer.0." in n} == (
        tiny_gte.LAYER_KEYS
    )
    assert {n for n in names if n.startswith("embeddings.")} == {
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    }
    reranker = set(load_file(str(tiny_source("gte", "reranker") / "model.safetensors")))
    assert "new.embeddings.token_type_embeddings.weight" in reranker
    assert {"pooler.dense.weight", "classifier.weight"} <= reranker


def test_rotary_equals_transformers_llama_rotary() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0)
    reference = LlamaRotaryEmbedding(config)
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)  # (batch, heads, seq, head_dim)
    cos_ref, sin_ref = reference(q, torch.arange(9)[None].expand(2, -1))
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    cos, sin = rotary.cos_sin(rotary.inverse_frequencies(16, 500000.0), 9)
    np.testing.assert_allclose(rotary.rotate(q, cos, sin), q_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(rotary.rotate(k, cos, sin), k_ref, atol=1e-5, rtol=0)


def test_ntk_frequencies_match_the_formula() -> None:
    """rope_theta 500000, factor 2, head_dim 8: 1 / (1e6 ** (2i / 8)) / 2 ** (2 / 8)."""
    got = rotary.ntk_inverse_frequencies(8, 500000.0, 2.0).tolist()
    want = [1 / (1e6 ** (i / 4)) / 2**0.25 for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_glu_mlp_equals_transformers_llama_mlp() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    reference = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=48, hidden_act="gelu"))
    config = gte_model.GteConfig.from_json(tiny_gte.config("embedding", 100))
    ours = gte_model.Mlp(config)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(std=0.2)
        # GTE's up_gate_proj is [up; gate]; act(gate) * up, then down (with a bias, zero here).
        ours.up_gate_proj.weight.copy_(
            torch.cat([reference.up_proj.weight, reference.gate_proj.weight])
        )
        ours.down_proj.weight.copy_(reference.down_proj.weight)
        ours.down_proj.bias.zero_()
        x = torch.randn(2, 5, 32)
        np.testing.assert_allclose(ours(x), reference(x), atol=1e-5, rtol=0)


def test_unsupported_config_is_a_clear_error() -> None:
    from tei_ort.errors import UnsupportedModel

    fields = tiny_gte.config("embedding", 100) | {"logn_attention_scale": True}
    with pytest.raises(UnsupportedModel, match="logn_attention_scale"):
        gte_model.GteConfig.from_json(fields)
