"""Every architecture x head: exported, validated by the pipeline, and checked here once more
against a transformers forward pass written independently of tei_ort.export.reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tei_ort.package import Pooling, Task, VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.providers import openvino_bf16
from tests.export import tiny_models
from tests.export.conftest import TINY_TEXTS, TinyPackage, TinySource
from tests.export.torch_forward import torch_embeddings, torch_logits, torch_splade

CASES = [(family, head) for family in tiny_models.BERT_FAMILIES for head in tiny_models.HEADS]
TEXTS = [
    "What does the assert statement do?",
    "x",
    "The import system " * 40,  # past the limit: truncated
    "Übung macht den Meister, naïve café.",
    "",
]
EXPECTED_TASK = {
    "embedding": Task.EMBEDDING,
    "classification": Task.CLASSIFICATION,
    "reranker": Task.RERANKER,
    "masked_lm": Task.SPARSE_EMBEDDING,
}
# Fused op groups each family's fp32 graph must contain. MPNet adds a relative-position bias to
# the attention scores, which ORT's BERT attention fusion does not match: its attention stays
# unfused (and validated).
EXPECTED_FUSIONS = {
    "bert": {"Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"},
    "roberta": {"Attention", "SkipLayerNormalization", "BiasGelu"},
    "xlm-roberta": {"Attention", "SkipLayerNormalization", "BiasGelu"},
    "camembert": {"Attention", "SkipLayerNormalization", "BiasGelu"},
    "distilbert": {"Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"},
    "mpnet": {"SkipLayerNormalization", "BiasGelu"},
}


@pytest.mark.parametrize(("family", "head"), CASES)
def test_export_validates_fp32(tiny_package: TinyPackage, family: str, head: str) -> None:
    result = tiny_package(family, head)
    manifest = result.manifest
    assert manifest.task is EXPECTED_TASK[head]
    assert (
        manifest.architecture
        == tiny_models.FAMILIES[family].class_prefix + tiny_models.HEAD_SUFFIX[head]
    )
    assert manifest.uses_token_type_ids is (family == "bert")
    fp32 = manifest.variant(VariantName.FP32)
    assert fp32.validation is not None and fp32.validation.passed, fp32.validation
    assert fp32.validation.max_abs_diff is not None and fp32.validation.max_abs_diff < 1e-4
    assert fp32.validation.texts == (TINY_TEXTS if head != "reranker" else 8 * 16)


@pytest.mark.skipif(
    not openvino_bf16(), reason="needs the openvino package and a CPU with bfloat16"
)
@pytest.mark.parametrize(("family", "head"), CASES)
def test_export_validates_bf16_through_openvino(
    tiny_package: TinyPackage, family: str, head: str
) -> None:
    bf16 = tiny_package(family, head).manifest.variant(VariantName.BF16)
    assert bf16.file == "model.onnx" and bf16.providers == ("openvino",)
    validation = bf16.validation
    assert validation is not None and validation.texts > 0, validation  # OpenVINO ran it
    if head in ("classification", "reranker"):
        assert validation.passed, validation  # logits: element-wise thresholds only
    else:
        # Vectors: every cosine within bf16's threshold. Not `passed`: it also asks overlap@10,
        # and a tiny random model's near-identical vectors rank 24 passages by rounding noise
        # (roberta-embedding: cosine 0.99999999, overlap 0.94).
        assert validation.cosine_min is not None and validation.cosine_min >= 0.999, validation


@pytest.mark.parametrize(("family", "head"), CASES)
def test_runtime_matches_transformers_forward(
    tiny_package: TinyPackage, tiny_source: TinySource, family: str, head: str
) -> None:
    source = tiny_source(family, head)
    model = Model.load(
        tiny_package(family, head).path, RuntimeOptions(provider="cpu", variant="fp32")
    )
    if head == "embedding":
        got = model.embed(TEXTS)
        want = torch_embeddings(source, TEXTS)
    elif head == "masked_lm":
        got = model.embed_sparse(TEXTS)
        want = torch_splade(source, TEXTS)
        assert np.array_equal(got > 1e-3, want > 1e-3)  # the same (clearly) non-zero terms
    elif head == "reranker":
        got = model.rerank(TEXTS[0], TEXTS[1:], raw_scores=True)
        want = torch_logits(source, [(TEXTS[0], t) for t in TEXTS[1:]])[:, 0]
    else:
        got = model.predict(TEXTS, raw_scores=True)
        want = torch_logits(source, TEXTS)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4 if head != "masked_lm" else 1e-3, rtol=0)


@pytest.mark.parametrize(("family", "head"), [(f, h) for f, h in CASES if h != "reranker"])
def test_batch_invariance(tiny_package: TinyPackage, family: str, head: str) -> None:
    """An input alone gives the same output as inside a batch of mixed lengths (padding masked)."""
    model = Model.load(
        tiny_package(family, head).path, RuntimeOptions(provider="cpu", variant="fp32")
    )
    run = {"embedding": model.embed, "masked_lm": model.embed_sparse}.get(
        head, lambda texts: model.predict(texts, raw_scores=True)
    )
    batch = run(TEXTS)
    for index, text in enumerate(TEXTS):
        np.testing.assert_allclose(run([text])[0], batch[index], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", tiny_models.BERT_FAMILIES)
def test_fused_ops_are_in_the_fp32_graph(tiny_package: TinyPackage, family: str) -> None:
    result = tiny_package(family, "embedding")
    graph = onnx.load(str(result.path / "model.onnx"), load_external_data=False)
    ops = {node.op_type for node in graph.graph.node}
    assert EXPECTED_FUSIONS[family] <= ops, sorted(ops)
    assert "graph: fused" in (result.manifest.variant("fp32").validation or _fail()).note


@pytest.mark.parametrize("family", tiny_models.BERT_FAMILIES)
def test_embedding_manifest(tiny_package: TinyPackage, family: str) -> None:
    spec = tiny_models.FAMILIES[family]
    manifest = tiny_package(family, "embedding").manifest
    assert manifest.pooling is Pooling({"lasttoken": "last_token"}.get(spec.pooling, spec.pooling))
    assert manifest.max_input_length == 48  # sentence_bert_config.json, below the 64 positions
    assert manifest.dimensions == (16 if spec.dense else 32)
    assert manifest.normalize is spec.dense
    assert [d.activation.value for d in manifest.dense] == (["tanh"] if spec.dense else [])
    assert manifest.prompts == {"query": "query: ", "passage": "passage: "}


@pytest.mark.parametrize("family", tiny_models.BERT_FAMILIES)
def test_other_heads_manifest(tiny_package: TinyPackage, family: str) -> None:
    classifier = tiny_package(family, "classification").manifest
    assert classifier.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert classifier.output_name == "logits"
    # No sentence-transformers config: the positions (64) bound the input, not the tokenizer's
    # "no limit" model_max_length (1e30).
    assert classifier.max_input_length == 64
    sparse = tiny_package(family, "masked_lm").manifest
    assert sparse.output_name == "sparse_embedding"
    assert sparse.pooling is Pooling.SPLADE
    vocab = json.loads((tiny_package(family, "masked_lm").path / "config.json").read_text())[
        "vocab_size"
    ]
    assert sparse.dimensions == vocab


def _fail() -> object:
    raise AssertionError("no validation")
