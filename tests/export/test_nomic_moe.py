"""nomic-embed-text-v2-moe's layout (nomic_bert with a mixture of experts every second layer),
exported from our own modules (nomic_bert_model.py, nomic_moe.py).

Checked independently: the graph's dense "every expert, unrouted ones times zero" MLP equals a
token-by-token routing loop written here from TEI's and vLLM's ports (top-k of the router's
softmax, no renormalization, act(x @ w1_e.T) @ w2_e, plus the shared bias); the tensor names are
the ones those ports load. Not independently: real v2-moe weights (not on PyPI, no hub here) and
its config's values beyond the names (taken from the ports, at tiny size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tei_ort.export.architectures import nomic_bert_model, nomic_moe
from tei_ort.export.pipeline import ExportResult, export_model
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tests.export import tiny_nomic
from tests.export.conftest import TINY_OPTIONS
from tests.export.test_nomic_bert import TEXTS, reference


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tokenizer_dirs: dict[str, Path]) -> Path:
    return tiny_nomic.build_moe(tokenizer_dirs["unigram"], tmp_path_factory.mktemp("moe") / "m")


@pytest.fixture(scope="module")
def package(source: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_model(str(source), tmp_path_factory.mktemp("moe-pkg") / "pkg", TINY_OPTIONS)


@pytest.fixture(scope="module")
def model(package: ExportResult) -> Model:
    return Model.load(package.path, RuntimeOptions(provider="cpu", variant="fp32"))


def test_fp32_validated(package: ExportResult) -> None:
    manifest = package.manifest
    fp32 = manifest.variant(VariantName.FP32).validation
    assert fp32 is not None and fp32.passed and fp32.max_abs_diff is not None
    assert fp32.max_abs_diff < 1e-4
    assert manifest.max_input_length == tiny_nomic.MOE_MAX_SEQ_LENGTH


def test_runtime_matches_own_module(model: Model, source: Path) -> None:
    got = model.embed(TEXTS, prompt_name="search_query")
    want = reference(source, TEXTS, "search_query: ")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_batch_invariance(model: Model) -> None:
    batch = model.embed(TEXTS)
    for index, text in enumerate(TEXTS):
        np.testing.assert_allclose(model.embed([text])[0], batch[index], atol=1e-5, rtol=0)


def test_checkpoint_tensor_names_are_the_ports(source: Path) -> None:
    names = set(load_file(str(source / "model.safetensors")))
    assert {n.removeprefix("encoder.layers.1.") for n in names if ".layers.1." in n} == (
        tiny_nomic.MOE_LAYER_KEYS
    )
    dense_layer = {n.removeprefix("encoder.layers.0.") for n in names if ".layers.0." in n}
    assert {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"} <= dense_layer


def test_moe_equals_token_by_token_routing() -> None:
    """Each token through only its top-2 experts, weighted by their softmax probabilities."""
    torch.manual_seed(3)
    hidden, inner, experts = 16, 24, 4
    moe = nomic_moe.MoeMlp(hidden, inner, experts, 2, torch.nn.functional.gelu)
    with torch.no_grad():
        for parameter in moe.parameters():
            parameter.normal_(std=0.3)
        x = torch.randn(2, 5, hidden)
        got = moe(x)
        w1 = moe.experts.mlp.w1.reshape(experts, inner, hidden)
        w2 = moe.experts.mlp.w2.reshape(experts, inner, hidden)
        want = torch.empty_like(x)
        for b in range(2):
            for s in range(5):
                token = x[b, s]
                probabilities = torch.softmax(moe.router.layer.weight @ token, dim=0).tolist()
                ranked = sorted(range(experts), key=lambda e: -probabilities[e])[:2]
                total = moe.experts.bias.clone()
                for e in ranked:
                    inner_out = torch.nn.functional.gelu(w1[e] @ token)  # (inner,)
                    total += probabilities[e] * (inner_out @ w2[e])
                want[b, s] = total
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)


def test_moe_layers_are_every_second_from_one() -> None:
    config = nomic_bert_model.NomicConfig.from_json(tiny_nomic.moe_config(100) | {"n_layer": 4})
    model = nomic_bert_model.NomicBertModel(config)
    kinds = [type(layer.mlp).__name__ for layer in model.encoder.layers]
    assert kinds == ["Mlp", "MoeMlp", "Mlp", "MoeMlp"]


def test_gated_experts_are_refused() -> None:
    from tei_ort.errors import UnsupportedModel

    fields = tiny_nomic.moe_config(100) | {"activation_function": "swiglu"}
    with pytest.raises(UnsupportedModel, match="experts with 'swiglu'"):
        nomic_bert_model.NomicConfig.from_json(fields)
