"""The pipeline's decisions: reuse, the fused-or-unfused fp32 choice, failed variants, overrides."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tei_ort.errors import PackageError, ProviderUnavailable, UnsupportedModel
from tei_ort.export import fuse, pipeline, report, validate, variants
from tei_ort.export.pipeline import export_model
from tei_ort.package import Pooling, Task, VariantName, read_manifest
from tei_ort.runtime import Model, RuntimeOptions, openvino_session, selection
from tei_ort.runtime.providers import Provider, available, openvino_bf16
from tests.export.conftest import TINY_OPTIONS, TinySource


def test_second_export_is_reused_until_sources_or_options_change(
    tiny_source: TinySource, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(tiny_source("bert", "classification"), source)
    first = export_model(str(source), tmp_path / "pkg", TINY_OPTIONS)
    again = export_model(str(source), tmp_path / "pkg", TINY_OPTIONS)
    assert not first.reused and again.reused
    assert again.manifest == first.manifest and "onnx_export" not in again.seconds
    other_options = dataclasses.replace(TINY_OPTIONS, variants=(VariantName.FP32, VariantName.FP16))
    with_fp16 = export_model(str(source), tmp_path / "pkg", other_options)
    assert not with_fp16.reused and [v.name for v in with_fp16.manifest.variants] == [
        VariantName.FP32,
        VariantName.FP16,
    ]
    assert (tmp_path / "pkg" / "model.fp16.onnx").is_file()
    (source / "tokenizer_config.json").write_text(
        (source / "tokenizer_config.json").read_text() + " "
    )
    assert not export_model(str(source), tmp_path / "pkg", TINY_OPTIONS).reused
    assert not (tmp_path / "pkg" / "model.fp16.onnx").exists()  # no longer listed: removed
    assert not (tmp_path / "pkg" / ".work").exists()


def test_a_fused_graph_that_changes_the_numbers_is_not_served(
    tiny_source: TinySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fuse = fuse.fuse

    def corrupting_fuse(raw: Path, out: Path, *args: object, **kwargs: object) -> fuse.FusionReport:
        report = real_fuse(raw, out, *args, **kwargs)  # type: ignore[arg-type]
        graph = onnx.load(str(out))
        target = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * 1.5, target.name))
        onnx.save(graph, str(out))
        return report

    monkeypatch.setattr(fuse, "fuse", corrupting_fuse)
    result = export_model(str(tiny_source("bert", "embedding")), tmp_path / "pkg", TINY_OPTIONS)
    fp32 = result.manifest.variant(VariantName.FP32).validation
    assert fp32 is not None and fp32.passed
    assert fp32.note.startswith("graph: unfused (the fused graph failed: FAILED")
    ops = {n.op_type for n in onnx.load(str(result.path / "model.onnx")).graph.node}
    assert "Attention" not in ops


def test_a_failed_variant_is_recorded_and_never_served_by_default(
    tiny_source: TinySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = (validate.OutputKind.LOGITS, VariantName.FP16)
    monkeypatch.setitem(validate.THRESHOLDS, key, validate.Thresholds(max_abs_diff=0.0))
    options = dataclasses.replace(TINY_OPTIONS, variants=(VariantName.FP32, VariantName.FP16))
    result = export_model(str(tiny_source("roberta", "classification")), tmp_path / "pkg", options)
    fp16 = read_manifest(result.path).variant(VariantName.FP16)
    assert fp16.validation is not None and not fp16.validation.passed and not fp16.is_servable
    assert "FAILED max abs diff" in fp16.validation.note
    with pytest.raises(PackageError, match="did not pass validation"):
        Model.load(result.path, RuntimeOptions(provider="cpu", variant="fp16"))
    assert Model.load(result.path, RuntimeOptions(provider="cpu")).variant.name is VariantName.FP32


def test_fp16_keeps_int64_inputs_and_float32_outputs(
    tiny_source: TinySource, tmp_path: Path
) -> None:
    options = dataclasses.replace(TINY_OPTIONS, variants=(VariantName.FP32, VariantName.FP16))
    result = export_model(str(tiny_source("bert", "masked_lm")), tmp_path / "pkg", options)
    graph = onnx.load(str(result.path / "model.fp16.onnx"))
    assert {i.type.tensor_type.elem_type for i in graph.graph.input} == {onnx.TensorProto.INT64}
    assert [o.type.tensor_type.elem_type for o in graph.graph.output] == [onnx.TensorProto.FLOAT]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    fp16 = result.manifest.variant(VariantName.FP16)
    assert fp16.validation is not None and fp16.validation.passed and fp16.providers == ("cuda",)


def test_a_plain_encoder_needs_a_pooling(tiny_source: TinySource, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(tiny_source("distilbert", "embedding"), source)
    (source / "modules.json").unlink()
    with pytest.raises(UnsupportedModel, match="--pooling"):
        export_model(str(source), tmp_path / "pkg", TINY_OPTIONS)
    options = dataclasses.replace(TINY_OPTIONS, pooling=Pooling.MEAN)
    result = export_model(str(source), tmp_path / "pkg", options)
    assert result.manifest.pooling is Pooling.MEAN and result.manifest.max_input_length == 64
    assert result.manifest.variant(VariantName.FP32).is_servable


def test_task_and_pooling_overrides(tiny_source: TinySource, tmp_path: Path) -> None:
    """A masked LM exported for embeddings uses its bare encoder; an ST model's pooling can be
    overridden (and the reference follows the override)."""
    mlm = export_model(
        str(tiny_source("mpnet", "masked_lm")),
        tmp_path / "mlm",
        dataclasses.replace(TINY_OPTIONS, task=Task.EMBEDDING, pooling=Pooling.CLS),
    )
    assert (mlm.manifest.task, mlm.manifest.architecture, mlm.manifest.output_name) == (
        Task.EMBEDDING,
        "MPNetForMaskedLM",
        "last_hidden_state",
    )
    assert mlm.manifest.variant(VariantName.FP32).is_servable
    st = export_model(
        str(tiny_source("bert", "embedding")),
        tmp_path / "st",
        dataclasses.replace(TINY_OPTIONS, pooling=Pooling.CLS),
    )
    assert st.manifest.pooling is Pooling.CLS and st.manifest.variant(VariantName.FP32).is_servable


def test_int8_calls_the_quantizer_with_real_calibration_feeds(
    tiny_source: TinySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quantizer itself is tested beside it (export/quantize.py); here: what it is given, and
    that its graph is validated and recorded like any other variant."""
    seen: list[tuple[int, list[dict[str, np.ndarray]]]] = []

    def fake_quantize(
        fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]], weight_bits: int
    ) -> object:
        seen.append((weight_bits, feeds))
        shutil.copyfile(fp32, out)  # an "int8" graph identical to fp32: it must validate
        # A report, as quantize_int8 returns one: the pipeline reads None as "skipped".
        return object()

    monkeypatch.setattr(variants, "_quantizer", lambda: fake_quantize)
    names = (VariantName.FP32, VariantName.INT8, VariantName.INT8_W7)
    options = dataclasses.replace(TINY_OPTIONS, variants=names)
    result = export_model(str(tiny_source("bert", "embedding")), tmp_path / "pkg", options)
    assert [bits for bits, _ in seen] == [8, 7]  # int8, then int8-w7
    feeds = seen[0][1]
    assert len(feeds) == variants.CALIBRATION_TEXTS // variants.CALIBRATION_BATCH
    assert set(feeds[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(f["input_ids"].dtype == np.int64 and f["input_ids"].shape[0] == 8 for f in feeds)
    assert max(f["input_ids"].shape[1] for f in feeds) <= result.manifest.max_input_length
    assert 0 in feeds[0]["attention_mask"]  # mixed lengths, padded
    for name in (VariantName.INT8, VariantName.INT8_W7):
        variant = result.manifest.variant(name)
        assert variant.providers == ("cpu",) and variant.is_servable
    model = Model.load(result.path, RuntimeOptions(provider="cpu"))
    # Three identical graphs: the trial may pick any; each is listed as validated here.
    assert model.variant.name in names
    for name in names:
        assert f"cpu:{name.value}: passed validation at export on" in model.selection_note


@pytest.mark.skipif(not openvino_bf16(), reason="needs the openvino package and bfloat16")
def test_a_graph_openvino_cannot_run_is_a_failed_bf16_variant_not_a_failed_export(
    tiny_source: TinySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PackageError("model.onnx: OpenVINO could not compile it (unsupported operator X)")

    monkeypatch.setattr(openvino_session.OpenVINOSession, "__init__", refuse)
    options = dataclasses.replace(TINY_OPTIONS, variants=(VariantName.FP32, VariantName.BF16))
    result = export_model(str(tiny_source("bert", "embedding")), tmp_path / "pkg", options)
    bf16 = result.manifest.variant(VariantName.BF16)
    assert bf16.validation is not None and not bf16.validation.passed
    assert "unsupported operator X" in bf16.validation.note and not bf16.is_servable
    assert result.manifest.variant(VariantName.FP32).is_servable
    model = Model.load(result.path)  # auto: OpenVINO has nothing validated, the CPU EP serves
    assert (model.provider.value, model.variant.name) == ("cpu", VariantName.FP32)


def test_without_openvino_bf16_the_export_lists_bf16_for_the_serving_cpu_to_validate(
    tiny_source: TinySource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An image's build stage or a CI runner without bfloat16 still lists bf16 (it has no graph
    of its own: OpenVINO compiles model.onnx), unvalidated; a server that offers OpenVINO
    validates it on the package's fidelity set before serving it. Here OpenVINO is offered on
    every CPU: where it has no bfloat16 it compiles at f32, and that is refused with its reason;
    where it has, bf16 is re-validated (a tiny random model may miss bf16's bar either way)."""
    pytest.importorskip("openvino")
    caplog.set_level("INFO", logger="tei_ort.export.variants")
    with monkeypatch.context() as patch:
        patch.setattr(variants, "openvino_bf16", lambda: False)
        options = dataclasses.replace(TINY_OPTIONS, variants=(VariantName.FP32, VariantName.BF16))
        result = export_model(str(tiny_source("bert", "embedding")), tmp_path / "pkg", options)
    assert [v.name for v in result.manifest.variants] == [VariantName.FP32, VariantName.BF16]
    bf16 = result.manifest.variant(VariantName.BF16)
    assert (bf16.file, bf16.providers, bf16.validation) == ("model.onnx", ("openvino",), None)
    assert not bf16.is_servable
    assert "bf16 listed, not validated: OpenVINO does not run bfloat16 natively here" in caplog.text
    (row,) = [r for r in report.rows_for("tiny", result) if r[1] == "bf16"]
    assert row[2:7] == ("-", "-", "-", "-", "not validated")
    assert "tei-serve validates it at first start" in row[7]
    if not openvino_bf16():  # pinned where OpenVINO has no bfloat16: refused, never run as fp32
        with pytest.raises(ProviderUnavailable, match="variant 'bf16' runs only on OpenVINO"):
            Model.load(result.path, RuntimeOptions(variant="bf16"))

    offered = available() | {Provider.OPENVINO}
    monkeypatch.setattr(selection, "available", lambda: offered)
    model = Model.load(result.path, RuntimeOptions(intra_op_threads=1))
    (part,) = [p for p in model.selection_note.split("; ") if p.startswith("openvino:bf16: ")]
    if not openvino_bf16():
        assert (model.provider, model.variant.name) == (Provider.CPU, VariantName.FP32)
        assert part.startswith("openvino:bf16: not served, failed re-validation here (")
        assert "OpenVINO compiled model.onnx at f32, not bf16" in part
    else:
        assert "re-validation here" in part, model.selection_note


def test_an_edited_exporter_exports_again(
    tiny_source: TinySource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dev tree whose exporter, validation texts or runtime changed must not reuse a package
    # (and its manifest's validation) that the old code wrote.
    source = tiny_source("bert", "classification")
    assert not export_model(str(source), tmp_path / "pkg", TINY_OPTIONS).reused
    assert export_model(str(source), tmp_path / "pkg", TINY_OPTIONS).reused
    assert len(pipeline.code_digest()) == 64
    monkeypatch.setattr(pipeline, "code_digest", lambda: "0" * 64)
    assert not export_model(str(source), tmp_path / "pkg", TINY_OPTIONS).reused
