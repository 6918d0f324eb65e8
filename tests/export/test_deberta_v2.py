"""DeBERTa-v2/v3 (deberta-v2): tiny v3-style models exported, validated and checked against
transformers; classifiers, re-rankers and the bare encoder."""

from __future__ import annotations

import onnx
import pytest

from tests.export import family_checks, tiny_models
from tests.export.conftest import TinyPackage, TinySource

HEADS = tiny_models.FAMILIES["deberta-v2"].heads


@pytest.mark.parametrize("head", HEADS)
def test_fp32_validated(tiny_package: TinyPackage, head: str) -> None:
    family_checks.check_fp32_validated(tiny_package, "deberta-v2", head)
    manifest = tiny_package("deberta-v2", head).manifest
    assert manifest.model_type == "deberta-v2" and not manifest.uses_token_type_ids


@pytest.mark.parametrize("head", HEADS)
def test_runtime_matches_transformers(
    tiny_package: TinyPackage, tiny_source: TinySource, head: str
) -> None:
    family_checks.check_runtime_matches(tiny_package, tiny_source, "deberta-v2", head)


@pytest.mark.parametrize("head", HEADS)
def test_batch_invariance(tiny_package: TinyPackage, head: str) -> None:
    family_checks.check_batch_invariance(tiny_package, "deberta-v2", head)


def test_fused_where_ort_can(tiny_package: TinyPackage) -> None:
    """ORT's BERT fusion matches DeBERTa's layer norms and GELU, not its disentangled attention."""
    graph = onnx.load(str(tiny_package("deberta-v2", "classification").path / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops, sorted(ops)
    assert "Attention" not in ops


def test_no_if_left_and_bf16_validates(tiny_package: TinyPackage) -> None:
    """transformers' build_rpos exports as an If that OpenVINO cannot compile; the family's graph
    fix takes its self-attention branch, so the package graph has none and bf16 is built."""
    from tei_ort.package import VariantName
    from tei_ort.runtime.providers import openvino_bf16

    result = tiny_package("deberta-v2", "reranker")
    graph = onnx.load(str(result.path / "model.onnx"))
    assert "If" not in {node.op_type for node in graph.graph.node}
    if not openvino_bf16():
        pytest.skip("needs the openvino package and a CPU with bfloat16 for the bf16 half")
    bf16 = result.manifest.variant(VariantName.BF16).validation
    assert bf16 is not None and bf16.passed and bf16.texts > 0, bf16
