"""NomicBERT (model_type nomic_bert, nomic-embed-text-v1 / v1.5), exported from our own module
(tei_ort/export/architectures/nomic_bert_model.py) without running the hub's code.

Checked independently: the rotary embedding equals transformers' LLaMA rotary (GPT-NeoX halves)
and, interleaved and partial (rotary_emb_fraction < 1), GPT-J's; the SwiGLU MLP equals
fc2(fc11(x) * silu(fc12(x))) worked in numpy; the checkpoint's tensor names and config are the
real ones; 8,192 positions read from n_positions (2,048 with rotary_scaling_factor). The
mixture of experts of v2-moe: test_nomic_moe.py. Not independently: the block as a whole
(post-norm order, Wqkv's "(three heads head_dim)" split follow contrastors' code) and real nomic
weights (none install from PyPI, the hub is not reachable here)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tei_ort.errors import UnsupportedModel
from tei_ort.export.architectures import nomic_bert_model
from tei_ort.export.hub import locate
from tei_ort.export.pipeline import export_model
from tei_ort.export.recipes import lookup
from tei_ort.export.source import read_source
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.providers import openvino_bf16
from tests.export import family_checks, tiny_nomic
from tests.export.conftest import TINY_OPTIONS, TinyPackage, TinySource

FAMILY = "nomic-bert"
TEXTS = [*family_checks.TEXTS[:2], "The import system " * 40, *family_checks.TEXTS[3:]]


def reference(
    source: Path, texts: list[str], prompt: str = "", normalize: bool = True
) -> np.ndarray:
    """Our module on transformers' tokenization of prompt + text, mean-pooled, normalized."""
    from transformers import AutoTokenizer

    from tei_ort.export.architectures import own

    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    model = own.load(source, lookup("NomicBertModel"))
    encoded = tokenizer(
        [prompt + t for t in texts],
        padding=True,
        truncation=True,
        max_length=tiny_nomic.MAX_POSITIONS,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(
            encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"]
        )  # (batch, seq, hidden)
    mask = encoded["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    out = torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled
    return out.numpy()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def model(tiny_package: TinyPackage) -> Model:
    return Model.load(
        tiny_package(FAMILY, "embedding").path, RuntimeOptions(provider="cpu", variant="fp32")
    )


def test_fp32_validated(tiny_package: TinyPackage) -> None:
    manifest = tiny_package(FAMILY, "embedding").manifest
    fp32 = manifest.variant(VariantName.FP32).validation
    assert fp32 is not None and fp32.passed and fp32.max_abs_diff is not None
    assert fp32.max_abs_diff < 1e-4 and fp32.texts >= 32
    assert manifest.model_type == "nomic_bert" and manifest.uses_token_type_ids
    assert manifest.architecture == "NomicBertModel"
    assert manifest.max_input_length == tiny_nomic.MAX_POSITIONS  # n_positions
    assert manifest.prompts == tiny_nomic.PROMPTS and manifest.normalize


def test_source_reads_the_gpt2_style_config_names(tiny_source: TinySource) -> None:
    source = read_source(locate(str(tiny_source(FAMILY, "embedding"))))
    assert (source.hidden_size, source.num_attention_heads) == (32, 4)
    assert source.max_position_embeddings == tiny_nomic.MAX_POSITIONS
    assert source.max_input_length() == tiny_nomic.MAX_POSITIONS


def test_rotary_scaling_stops_inputs_at_the_trained_length(
    tiny_source: TinySource, tmp_path: Path
) -> None:
    """With rotary_scaling_factor (dynamic NTK past max_trained_positions, which would make a
    vector depend on its batch's padded length) inputs stop at max_trained_positions, where
    nomic's code applies no scaling: the same frequencies, the same vectors."""
    import shutil

    folder = tmp_path / "scaled"
    shutil.copytree(tiny_source(FAMILY, "embedding"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"rotary_scaling_factor": 2.0}))
    assert read_source(locate(str(folder))).max_input_length() == 2048
    scaled = nomic_bert_model.NomicConfig.from_json(config | {"rotary_scaling_factor": 2.0})
    assert scaled == nomic_bert_model.NomicConfig.from_json(config)


def test_runtime_matches_own_module(model: Model, tiny_source: TinySource) -> None:
    got = model.embed(TEXTS)
    want = reference(tiny_source(FAMILY, "embedding"), TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_prompts_are_nomics(model: Model, tiny_source: TinySource) -> None:
    """prompt_name search_query / search_document prepend the config's text, as
    sentence-transformers does; the two differ from each other and from no prompt."""
    source = tiny_source(FAMILY, "embedding")
    query = model.embed(TEXTS[:2], prompt_name="search_query")
    document = model.embed(TEXTS[:2], prompt_name="search_document")
    np.testing.assert_allclose(query, reference(source, TEXTS[:2], "search_query: "), atol=1e-4)
    np.testing.assert_allclose(
        document, reference(source, TEXTS[:2], "search_document: "), atol=1e-4
    )
    assert np.abs(query - document).max() > 1e-2
    assert np.abs(query - model.embed(TEXTS[:2])).max() > 1e-2


def test_matryoshka_dimensions(model: Model, tiny_source: TinySource) -> None:
    """dimensions=16: the first 16 values of the pooled vector, then normalized (TEI's order)."""
    pooled = reference(tiny_source(FAMILY, "embedding"), TEXTS, normalize=False)[:, :16]
    want = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    got = model.embed(TEXTS, dimensions=16)
    assert got.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_batch_invariance(tiny_package: TinyPackage) -> None:
    family_checks.check_batch_invariance(tiny_package, FAMILY, "embedding")


def test_long_input(model: Model, tiny_source: TinySource) -> None:
    """A ~2,500-token input (past the 2,048 positions nomic trained on; no rotary scaling, as
    v1.5's config) alone, beside a short one, and in PyTorch agree."""
    long_text = "The import statement combines two operations. " * 360
    assert len(model.encode([long_text])[0]) > 2048
    alone = model.embed([long_text])
    np.testing.assert_allclose(alone[0], model.embed([long_text, "x"])[0], atol=1e-5, rtol=0)
    want = reference(tiny_source(FAMILY, "embedding"), [long_text])
    np.testing.assert_allclose(alone, want, atol=1e-4, rtol=0)


def test_every_variant_exported_and_validated(tiny_source: TinySource, tmp_path: Path) -> None:
    """fp32, fp16, int8, int8-w7 and (where OpenVINO runs bfloat16 natively: AMX, AVX512_BF16;
    listed unvalidated elsewhere) bf16 each carry a validation against the PyTorch reference; fp32 and fp16 pass it (int8 on
    random weights may miss its threshold and is then not served, as the pipeline decides)."""
    names = (VariantName.FP32, VariantName.FP16, VariantName.INT8, VariantName.INT8_W7)
    options = dataclasses.replace(TINY_OPTIONS, variants=(*names, VariantName.BF16))
    result = export_model(str(tiny_source(FAMILY, "embedding")), tmp_path / "pkg", options)
    assert {v.name for v in result.manifest.variants} == {*names, VariantName.BF16}
    validations = family_checks.validations(result.manifest)
    assert set(validations) == set(names) | ({VariantName.BF16} if openvino_bf16() else set())
    assert all(v is not None and v.texts >= 32 for v in validations.values()), validations
    for name in (VariantName.FP32, VariantName.FP16):
        check = validations[name]
        assert check is not None and check.passed, (name, check)


def test_hub_code_in_the_folder_is_never_imported(tiny_source: TinySource, tmp_path: Path) -> None:
    family_checks.check_hub_code_never_runs(tiny_source(FAMILY, "embedding"), tmp_path)


def test_checkpoint_tensor_names_are_the_real_ones(tiny_source: TinySource) -> None:
    source = tiny_source(FAMILY, "embedding")
    names = set(load_file(str(source / "model.safetensors")))
    assert {n.removeprefix("encoder.layers.0.") for n in names if ".layers.0." in n} == (
        tiny_nomic.LAYER_KEYS
    )
    assert {n for n in names if not n.startswith("encoder.")} == tiny_nomic.EMBEDDING_KEYS
    # The MiniLM vocabulary (30,522, as nomic's) padded to a multiple of 64: 30,528 rows.
    word = load_file(str(source / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert word.shape == (30528, 32)


def test_pretraining_checkpoint_loads_with_bert_prefix(tiny_source: TinySource) -> None:
    """nomic-bert-2048 (NomicBertForPreTraining) prefixes every name with "bert." and carries an
    MLM head: the encoder loads from it and gives the same outputs."""
    source = tiny_source(FAMILY, "embedding")
    tensors = load_file(str(source / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    prefixed = {"bert." + k: v for k, v in tensors.items()}
    prefixed["cls.predictions.decoder.bias"] = torch.zeros(30528)
    ids = torch.tensor([[101, 2054, 2003, 102]])
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    plain = nomic_bert_model.build(config, "Model", tensors)
    with torch.no_grad():
        np.testing.assert_array_equal(
            nomic_bert_model.build(config, "Model", prefixed)(*args), plain(*args)
        )
    assert lookup("NomicBertForPreTraining").head.class_suffix == "Model"


def test_rotary_equals_transformers_llama_rotary() -> None:
    """nomic's non-interleaved rotary, base 1000 (v1.5's rotary_emb_base), full head."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    reference_rotary = LlamaRotaryEmbedding(
        LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=1000.0)
    )
    q, k = torch.randn(2, 4, 9, 16), torch.randn(2, 4, 9, 16)  # (batch, heads, seq, head_dim)
    cos_ref, sin_ref = reference_rotary(q, torch.arange(9)[None].expand(2, -1))
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    config = nomic_bert_model.NomicConfig.from_json(
        tiny_nomic.config(100, n_embd=64, n_head=4, rotary_emb_base=1000)
    )
    cos, sin = nomic_bert_model.rotary_cos_sin(config, 9)
    np.testing.assert_allclose(nomic_bert_model.apply_rotary(q, cos, sin, False), q_ref, atol=1e-5)
    np.testing.assert_allclose(nomic_bert_model.apply_rotary(k, cos, sin, False), k_ref, atol=1e-5)


def test_interleaved_partial_rotary_equals_transformers_gptj() -> None:
    """rotary_emb_interleaved with rotary_emb_fraction 0.5: GPT-J rotates interleaved pairs of
    the first rotary_dim values of each head and passes the rest through."""
    from transformers.models.gptj.modeling_gptj import (
        apply_rotary_pos_emb,
        create_sinusoidal_positions,
    )

    config = nomic_bert_model.NomicConfig.from_json(
        tiny_nomic.config(
            100,
            n_embd=64,
            n_head=4,
            rotary_emb_fraction=0.5,
            rotary_emb_interleaved=True,
            rotary_emb_base=10000,
        )
    )
    assert config.rotary_dim == 8
    x = torch.randn(2, 4, 9, 16)  # (batch, heads, seq, head_dim)
    sincos = create_sinusoidal_positions(9, 8)[torch.arange(9)][None]  # (1, seq, rotary_dim)
    sin, cos = torch.split(sincos, 4, dim=-1)
    # GPT-J works on (batch, seq, heads, head_dim).
    rotated = apply_rotary_pos_emb(x[..., :8].transpose(1, 2), sin, cos).transpose(1, 2)
    want = torch.cat([rotated, x[..., 8:]], dim=-1)
    cos_ours, sin_ours = nomic_bert_model.rotary_cos_sin(config, 9)
    got = nomic_bert_model.apply_rotary(x, cos_ours, sin_ours, True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_swiglu_mlp_by_hand() -> None:
    """fc2(fc11(x) * silu(fc12(x))), silu(z) = z / (1 + exp(-z)), in numpy on the same weights."""
    config = nomic_bert_model.NomicConfig.from_json(tiny_nomic.config(100))
    mlp = nomic_bert_model.GatedMlp(config)
    x = torch.randn(3, 5, 32)
    up = x.numpy() @ mlp.fc11.weight.detach().numpy().T
    gate = x.numpy() @ mlp.fc12.weight.detach().numpy().T
    want = (up * gate / (1 + np.exp(-gate))) @ mlp.fc2.weight.detach().numpy().T
    with torch.no_grad():
        np.testing.assert_allclose(mlp(x).numpy(), want, atol=1e-5, rtol=0)
    assert mlp.fc11.bias is None and mlp.fc2.bias is None  # mlp_fc1_bias / mlp_fc2_bias false


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prenorm", True),
        ("moe_normalize_expert_weights", True),
        ("activation_function", "relu"),
    ],
)
def test_unsupported_config_is_a_clear_error(field: str, value: object) -> None:
    with pytest.raises(UnsupportedModel, match=field):
        nomic_bert_model.NomicConfig.from_json(tiny_nomic.config(100, **{field: value}))
