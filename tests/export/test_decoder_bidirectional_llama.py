"""NVIDIA's bidirectional Llama (`LlamaBidirectionalModel`, model_type `llama_bidirec`: the layout
of llama-3.2-nv-embedqa-1b-v2): LlamaModel's tensors, attention in both directions with padding
keys blocked, mean ("avg") pooling named in config.json, its modelling code on the hub never run.

The reference is transformers' own LlamaModel (sdpa) made bidirectional as NVIDIA's code does it
(is_causal False on every attention layer, the 4-D padding mask of _prepare_4d_attention_mask),
then mean pooling over the real tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tei_ort.export.pipeline import ExportOptions, ExportResult, export_model
from tei_ort.package import Pooling, VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tests.export import tiny_decoders
from tests.export.test_decoders import TEXTS

OPTIONS = ExportOptions(
    variants=(VariantName.FP32, VariantName.INT8_WO), validation_queries=8, validation_passages=24
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nv-llama")
    tokenizer = tiny_decoders.build_tokenizer(root / "tokenizer")
    folder = tiny_decoders.build("llama", tokenizer, root / "llama")
    for st_file in (
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ):
        (folder / st_file).unlink(missing_ok=True)
    for st_folder in ("1_Pooling", "2_Normalize"):
        shutil.rmtree(folder / st_folder, ignore_errors=True)
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "architectures": ["LlamaBidirectionalModel"],
        "model_type": "llama_bidirec",
        "pooling": "avg",
        "temperature": 1.0,
        "auto_map": {
            "AutoConfig": "llama_bidirectional_model.LlamaBidirectionalConfig",
            "AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    # The hub code the checkpoint names; tei-export must never import it.
    (folder / "llama_bidirectional_model.py").write_text("raise SystemExit('hub code was run')\n")
    return folder


@pytest.fixture(scope="module")
def package(source: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_model(str(source), tmp_path_factory.mktemp("packages") / "nv", OPTIONS)


def reference(source: Path, texts: list[str]) -> np.ndarray:
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaModel
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

    fields = json.loads((source / "config.json").read_text())
    for key in ("architectures", "model_type", "auto_map", "pooling", "temperature"):
        fields.pop(key)
    model = LlamaModel(LlamaConfig(**fields)).eval()
    model.load_state_dict(load_file(str(source / "model.safetensors")))
    for layer in model.layers:
        layer.self_attn.is_causal = False
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    rows = []
    for text in texts:  # one at a time: no padding in the reference
        ids = torch.tensor([tokenizer.encode(text).ids])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            hidden = model(
                input_ids=ids, attention_mask=_prepare_4d_attention_mask(mask, torch.float32)
            ).last_hidden_state
        rows.append(hidden[0].mean(0).numpy())
    return np.stack(rows)


def test_exported_bidirectional_with_mean_pooling(package: ExportResult) -> None:
    manifest = package.manifest
    assert manifest.model_type == "llama_bidirec"
    assert manifest.architecture == "LlamaBidirectionalModel"
    assert manifest.pooling is Pooling.MEAN and not manifest.normalize
    for variant in manifest.variants:
        assert variant.validation is not None and variant.validation.passed, variant


def test_vectors_equal_transformers_bidirectional(package: ExportResult, source: Path) -> None:
    texts = [t for t in TEXTS if t]  # no empty input: a bare mean over zero tokens
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))
    got = model.embed(texts)
    np.testing.assert_allclose(got, reference(source, texts), atol=1e-4, rtol=0)
    # Bidirectional: the first token's state depends on later tokens (a causal model's would not).
    alone, longer = model.embed_all(["alpha", "alpha beta gamma"])
    assert not np.allclose(alone[0], longer[0], atol=1e-3)
