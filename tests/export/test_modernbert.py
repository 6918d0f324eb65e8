"""ModernBERT (modernbert): tiny models with global and sliding-window layers (window 8, inputs
up to 64 tokens), embeddings and cross-encoders pooling by `classifier_pooling` (mean, cls),
exported, validated and checked against transformers / sentence-transformers."""

from __future__ import annotations

import json

import onnx
import pytest

from tests.export import family_checks, tiny_models
from tests.export.conftest import TinyPackage, TinySource

HEADS = tiny_models.FAMILIES["modernbert"].heads


@pytest.mark.parametrize("head", HEADS)
def test_fp32_validated(tiny_package: TinyPackage, head: str) -> None:
    family_checks.check_fp32_validated(tiny_package, "modernbert", head)
    manifest = tiny_package("modernbert", head).manifest
    assert manifest.model_type == "modernbert" and not manifest.uses_token_type_ids


@pytest.mark.parametrize("head", HEADS)
def test_runtime_matches_transformers(
    tiny_package: TinyPackage, tiny_source: TinySource, head: str
) -> None:
    family_checks.check_runtime_matches(tiny_package, tiny_source, "modernbert", head)


@pytest.mark.parametrize("head", HEADS)
def test_batch_invariance(tiny_package: TinyPackage, head: str) -> None:
    family_checks.check_batch_invariance(tiny_package, "modernbert", head)


@pytest.mark.parametrize(("head", "pooling"), [("classification", "mean"), ("reranker", "cls")])
def test_classifier_pooling_is_the_checkpoints(
    tiny_package: TinyPackage, head: str, pooling: str
) -> None:
    config = json.loads((tiny_package("modernbert", head).path / "config.json").read_text())
    assert config["classifier_pooling"] == pooling


def test_embedding_manifest(tiny_package: TinyPackage) -> None:
    manifest = tiny_package("modernbert", "embedding").manifest
    assert manifest.max_input_length == 48  # sentence_bert_config.json
    assert manifest.dimensions == 16 and manifest.normalize  # Dense + Normalize


def test_fused_where_ort_can(tiny_package: TinyPackage) -> None:
    graph = onnx.load(str(tiny_package("modernbert", "embedding").path / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert "SkipLayerNormalization" in ops, sorted(ops)
