"""int8 weight-only (tei_ort/export/weight_only.py): the decoder's constant-weight MatMuls become
8-bit MatMulNBits, the variant is validated against the PyTorch reference like every other, the
runtime serves it with vectors close to sentence-transformers', and encoders do not get it."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import onnx
import pytest
from onnx import helper

from tei_ort.export import fuse, graph_files, variants
from tei_ort.export.pipeline import ExportOptions, ExportResult, export_model
from tei_ort.fidelity import THRESHOLDS, OutputKind
from tei_ort.package import VariantName
from tei_ort.runtime import Model, RuntimeOptions
from tests import tiny_bert
from tests.export import tiny_decoders
from tests.export.test_decoders import TEXTS, st_embeddings

OPTIONS = ExportOptions(
    variants=(VariantName.FP32, VariantName.INT8_WO), validation_queries=8, validation_passages=24
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weight-only")
    tokenizer = tiny_decoders.build_tokenizer(root / "tokenizer")
    return tiny_decoders.build("qwen3", tokenizer, root / "qwen3")


@pytest.fixture(scope="module")
def package(source: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_model(str(source), tmp_path_factory.mktemp("packages") / "qwen3", OPTIONS)


def test_weights_become_8_bit_matmul_nbits(package: ExportResult) -> None:
    graph = onnx.load(str(package.path / "model.int8-wo.onnx"))
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    # 2 layers x (q, k, v, o, gate, up, down); attention's two activation MatMuls stay fp32.
    assert len(nbits) == 14
    attributes = {
        helper.get_attribute_value(a) for n in nbits for a in n.attribute if a.name == "bits"
    }
    assert attributes == {8}
    assert sum(n.op_type == "MatMul" for n in graph.graph.node) == 4
    variant = package.manifest.variant(VariantName.INT8_WO)
    assert variant.validation is not None and variant.validation.passed, variant.validation
    assert "14 MatMuls" in variant.validation.note
    assert variant.providers == ("cpu",)


def test_validated_at_the_int8_bars(package: ExportResult) -> None:
    validation = package.manifest.variant(VariantName.INT8_WO).validation
    assert validation is not None and validation.cosine_min is not None
    bars = THRESHOLDS[(OutputKind.DENSE, VariantName.INT8_WO)]
    assert bars == THRESHOLDS[(OutputKind.DENSE, VariantName.INT8)]
    assert bars.min_cosine is not None and validation.cosine_min >= bars.min_cosine
    assert validation.cosine_min < 1.0  # the weights really were rounded


def test_served_vectors_close_to_sentence_transformers(package: ExportResult, source: Path) -> None:
    model = Model.load(package.path, RuntimeOptions(provider="cpu", variant="int8-wo"))
    assert model.variant.name is VariantName.INT8_WO
    got = model.embed(TEXTS, prompt_name="query")
    want = st_embeddings(source, TEXTS, "query")
    cosines = np.sum(got * want, axis=1)  # both unit length
    assert cosines.min() > 0.995 and cosines.max() < 1 - 1e-7
    for index, text in enumerate(TEXTS):  # an input alone == the same input in the batch
        np.testing.assert_allclose(
            model.embed([text], prompt_name="query")[0], got[index], atol=1e-5, rtol=0
        )


def test_encoders_do_not_get_it(tmp_path: Path) -> None:
    source = tiny_bert.build(tmp_path / "bert")
    result = export_model(str(source), tmp_path / "package", OPTIONS)
    assert [v.name for v in result.manifest.variants] == [VariantName.FP32]
    assert not (result.path / "model.int8-wo.onnx").exists()


class _Reached(Exception):
    """The builder got past its size check to the quantizer."""


def _no_quantizer() -> None:
    raise _Reached


def test_calibrated_int8_skipped_on_graphs_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Over the external-data threshold (a ~0.5B decoder and up) only int8-wo quantizes: the
    calibrated int8 builders return no variant, with the reason logged, before the quantizer."""
    monkeypatch.setattr(variants, "_quantizer", _no_quantizer)
    raw = tmp_path / "raw.onnx"
    raw.write_bytes(b"")
    graphs = variants.Graphs(raw, raw, fuse.FusionReport({}), threshold_bytes=1000)
    validator = cast(variants.Validator, SimpleNamespace(package=tmp_path))
    calibrated = [
        build
        for name, build in variants.DERIVED_BUILDERS.items()
        if name.value.startswith("int8") and name is not VariantName.INT8_WO
    ]
    assert len(calibrated) >= 2  # int8 and int8-w7 (and int8-u8)
    for build in calibrated:
        with pytest.raises(_Reached):  # an inline graph goes on to the quantizer
            build(validator, graphs, ())
    graph_files.data_file(raw).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=variants.__name__):
        assert [build(validator, graphs, ()) for build in calibrated] == [None] * len(calibrated)
    skipped = [r.getMessage() for r in caplog.records if "external data" in r.getMessage()]
    assert len(skipped) == len(calibrated)
    assert "over 1000 bytes" in skipped[0] and "int8-wo" in skipped[0]
