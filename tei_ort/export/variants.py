"""The graph variants of a package and how each is built and validated: fp32 (the fused graph when
it validates, else the unfused one), fp16 for CUDA, int8 for the CPU EP, and bf16 (the fp32 graph
at OpenVINO's bfloat16 precision) for CPUs with AMX or AVX512_BF16 (listed unvalidated where the
exporting CPU cannot run it, for the serving CPU to validate)."""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from tei_ort.errors import BackendError, PackageError
from tei_ort.export import corpus, fuse, graph_files, weight_only
from tei_ort.export.architectures.decoders import OWN_MODULE as DECODER_MODULE
from tei_ort.export.runners import Subject
from tei_ort.fidelity import FloatArray, ValidationSet
from tei_ort.package import (
    TOKENIZER_FILE,
    Manifest,
    Validation,
    Variant,
    VariantName,
    write_manifest,
)
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.fidelity_check import FidelitySet, validate_here
from tei_ort.runtime.padding import pad
from tei_ort.runtime.providers import engine_name, openvino_bf16
from tei_ort.tokenization import Tokenizer

logger = logging.getLogger(__name__)

Feeds = dict[str, npt.NDArray[np.int64]]
# tei_ort.export.quantize.quantize_int8(fp32_onnx, out_onnx, calibration, weight_bits) -> report
QuantizeInt8 = Callable[[Path, Path, list[Feeds], int], object]

CALIBRATION_TEXTS = 64
CALIBRATION_BATCH = 8
# Calibration texts come from further into the corpus than the validation texts, so int8 is never
# judged on the texts it was calibrated on.
CALIBRATION_OFFSET = 300


@dataclass(frozen=True)
class VariantSpec:
    file: str
    providers: tuple[str, ...]  # best first
    validated_on: str = "cpu"  # the provider validation runs it on (fp16: the CPU EP, no GPU here)


VARIANT_SPECS: dict[VariantName, VariantSpec] = {
    VariantName.FP32: VariantSpec("model.onnx", ("cpu", "cuda")),
    VariantName.FP16: VariantSpec("model.fp16.onnx", ("cuda",)),
    VariantName.INT8: VariantSpec("model.int8.onnx", ("cpu",)),
    VariantName.INT8_W7: VariantSpec("model.int8-w7.onnx", ("cpu",)),
    VariantName.INT8_U8: VariantSpec("model.int8-u8.onnx", ("cpu",)),
    VariantName.INT8_WO: VariantSpec("model.int8-wo.onnx", ("cpu",)),
    VariantName.BF16: VariantSpec("model.onnx", ("openvino",), validated_on="openvino"),
}


@dataclass(frozen=True)
class Graphs:
    raw: Path  # optimum's export (SPLADE head appended)
    fused: Path  # after onnxruntime.transformers fusion
    fusion: fuse.FusionReport
    # Graphs over this size keep their tensors in `<graph>.data` (graph_files).
    threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES


class Validator:
    """Runs one variant of the package through the runtime and compares it with the reference,
    which is computed once."""

    def __init__(
        self,
        package: Path,
        base: Manifest,
        subject: Subject,
        vset: ValidationSet,
        reference: FloatArray,
        heads: Mapping[str, FloatArray] | None = None,  # BGE-M3's token heads' references
    ) -> None:
        self.package = package
        self.base = base
        self.subject = subject
        self.vset = vset
        self.reference = reference
        self.heads = dict(heads or {})

    def check(self, done: Sequence[Variant], name: VariantName) -> Validation:
        spec = VARIANT_SPECS[name]
        # The runtime reads the manifest, so list the candidate (unvalidated) before loading it.
        pending = Variant(name, spec.file, spec.providers)
        write_manifest(self.package, replace(self.base, variants=(*done, pending)))
        options = RuntimeOptions(
            provider=spec.validated_on, variant=name.value, allow_unvalidated=True
        )
        model = Model.load(self.package, options)
        validation = validate_here(
            model,
            FidelitySet(self.vset, self.reference, self.heads),
            isa_class=this_cpu().isa_class.value,
            engine=engine_name(model.provider),
        )
        logger.info("%s %s: %s", self.subject.recipe.architecture, name.value, validation.note)
        return validation


def build_fp32(validator: Validator, graphs: Graphs) -> Variant:
    """The fused graph when it validates (fusion is what CUDA kernels exist for; on this CPU it was
    a tie), else the unfused one: a fusion that changes the numbers is never served."""
    target = validator.package / VARIANT_SPECS[VariantName.FP32].file
    _copy_graph(graphs.fused, target)
    fused = validator.check((), VariantName.FP32)
    if fused.passed:
        note = f"graph: fused ({graphs.fusion.summary()}); {fused.note}"
        return _variant(VariantName.FP32, replace(fused, note=note), validator.package)
    _copy_graph(graphs.raw, target)
    plain = validator.check((), VariantName.FP32)
    note = f"graph: unfused (the fused graph failed: {fused.note}); {plain.note}"
    return _variant(VariantName.FP32, replace(plain, note=note), validator.package)


def _copy_graph(source: Path, target: Path) -> None:
    """A graph records its external-data file by name (`<graph>.data`), so a graph with external
    data is rewritten under its new name rather than copied."""
    if not graph_files.data_file(source).is_file():
        graph_files.data_file(target).unlink(missing_ok=True)
        shutil.copyfile(source, target)
        return
    graph_files.save_streamed(
        graph_files.load_structure(source), source.parent, target, threshold_bytes=0
    )


def build_fp16(validator: Validator, graphs: Graphs, done: Sequence[Variant]) -> Variant | None:
    fp32 = validator.package / VARIANT_SPECS[VariantName.FP32].file
    fuse.convert_fp16(
        fp32, validator.package / VARIANT_SPECS[VariantName.FP16].file, graphs.threshold_bytes
    )
    validation = validator.check(done, VariantName.FP16)
    return _variant(
        VariantName.FP16,
        replace(validation, note=f"validated on the CPU EP; {validation.note}"),
        validator.package,
    )


def build_int8(validator: Validator, graphs: Graphs, done: Sequence[Variant]) -> Variant | None:
    return _build_int8(validator, graphs, done, VariantName.INT8, weight_bits=8)


def build_int8_w7(validator: Validator, graphs: Graphs, done: Sequence[Variant]) -> Variant | None:
    """Both int8 variants are built: 8-bit weights are faster (MiniLM 1.96x fp32 against 1.80x
    on an AMX Xeon) where the GEMMs accumulate in 32 bits, 7-bit ones hold on every CPU; the
    server serves whichever validates on its CPU and runs faster there."""
    return _build_int8(validator, graphs, done, VariantName.INT8_W7, weight_bits=7)


def build_int8_u8(validator: Validator, graphs: Graphs, done: Sequence[Variant]) -> Variant | None:
    """int8's graph with its weights stored as uint8 (int8_u8): the same numbers, computed
    exactly by MLAS's u8u8 GEMM on the CPUs where its u8s8 one saturates. Derived from the int8
    graph this export built (whether or not that passed here: on AVX2 it fails where this one
    holds); quantized afresh when int8 was not asked for."""
    from tei_ort.export import int8_u8

    int8_graph = validator.package / VARIANT_SPECS[VariantName.INT8].file
    if not any(v.name is VariantName.INT8 for v in done) or not int8_graph.is_file():
        int8_graph = graphs.raw.with_name("model.int8-for-u8.onnx")
        if _quantize_into(graphs, validator, VariantName.INT8_U8, int8_graph, 8) is None:
            return None
    changed = int8_u8.convert(
        int8_graph,
        validator.package / VARIANT_SPECS[VariantName.INT8_U8].file,
        graphs.threshold_bytes,
    )
    validation = validator.check(done, VariantName.INT8_U8)
    note = f"int8's weights as uint8 (zero point 128), u8u8 MatMuls: {changed}; {validation.note}"
    return _variant(VariantName.INT8_U8, replace(validation, note=note), validator.package)


def _quantize_into(
    graphs: Graphs, validator: Validator, name: VariantName, out: Path, weight_bits: int
) -> object | None:
    """Runs the int8 quantizer into `out`; None (logged) where it is not installed or the graph
    is too large for it."""
    if graph_files.data_file(graphs.raw).is_file():
        logger.warning(
            "%s skipped: the graph is over %d bytes (external data); the calibrated int8 "
            "quantizer holds it whole and its calibration probe serializes it as one protobuf "
            "(2 GiB at most), and its GPTQ would hold copies of the weights beside it; int8-wo "
            "is such models' CPU variant",
            name.value,
            graphs.threshold_bytes,
        )
        return None
    quantize = _quantizer()
    if quantize is None:
        logger.warning("%s skipped: tei_ort.export.quantize is not available", name.value)
        return None
    feeds = calibration_feeds(validator.package, validator.base)
    # The unfused graph: the quantizer sees plain MatMuls rather than fused contrib ops.
    return quantize(graphs.raw, out, feeds, weight_bits)


def _build_int8(
    validator: Validator,
    graphs: Graphs,
    done: Sequence[Variant],
    name: VariantName,
    weight_bits: int,
) -> Variant | None:
    out = validator.package / VARIANT_SPECS[name].file
    report = _quantize_into(graphs, validator, name, out, weight_bits)
    if report is None:
        return None
    validation = validator.check(done, name)
    quantized, kept = getattr(report, "quantized_matmuls", None), getattr(report, "kept_fp32", ())
    if quantized is not None:
        summary = f"{weight_bits}-bit weights, int8 MatMuls: {quantized}, kept fp32: {len(kept)}"
        validation = replace(validation, note=f"{summary}; {validation.note}")
    return _variant(name, validation, validator.package)


def build_int8_wo(validator: Validator, graphs: Graphs, done: Sequence[Variant]) -> Variant | None:
    """int8 weight-only, for decoders: their weights are most of their bytes and CPU time, and
    the calibrated int8's per-layer search takes long at their size. Built from the package's
    fp32 graph (fused or not, as validated)."""
    if validator.subject.recipe.family.own_module != DECODER_MODULE:
        logger.info("int8-wo skipped: built for decoder families only")
        return None
    fp32 = validator.package / VARIANT_SPECS[VariantName.FP32].file
    out = validator.package / VARIANT_SPECS[VariantName.INT8_WO].file
    report = weight_only.quantize_weight_only(fp32, out, graphs.threshold_bytes)
    validation = validator.check(done, VariantName.INT8_WO)
    note = f"{report.summary()}; {validation.note}"
    return _variant(VariantName.INT8_WO, replace(validation, note=note), validator.package)


def build_bf16(validator: Validator, graphs: Graphs, done: Sequence[Variant]) -> Variant | None:
    """No new graph: OpenVINO compiles the validated fp32 one at bfloat16 precision. Validated
    only where it runs natively, so that the figures are bf16's and not an f32 fallback's.

    Where it cannot run natively (no bfloat16, or no openvino package) it is listed without a
    validation rather than left out: a package is often exported on one machine (an image's
    build stage, a CI runner) and served on another, and tei-serve on a CPU with bfloat16
    validates an unvalidated variant on the package's fidelity set at first start before it may
    serve it (tei_ort.runtime.selection). Left out, the fastest path of those CPUs was lost."""
    if not openvino_bf16():
        logger.info(
            "bf16 listed, not validated: OpenVINO does not run bfloat16 natively here (%s; it "
            "needs the openvino package and AMX or AVX512_BF16); tei-serve validates it at first "
            "start on a CPU that does, before serving it",
            this_cpu().describe(),
        )
        return _variant(VariantName.BF16, None, validator.package)
    try:
        validation = validator.check(done, VariantName.BF16)
    except (PackageError, BackendError) as exc:
        # An operator OpenVINO cannot compile or run: a failed variant, never a failed export.
        logger.warning("bf16: OpenVINO could not run the graph: %s", exc)
        validation = Validation(passed=False, texts=0, note=f"OpenVINO could not run it: {exc}")
        return _variant(VariantName.BF16, validation, validator.package)
    note = f"OpenVINO bf16; {validation.note}"
    return _variant(VariantName.BF16, replace(validation, note=note), validator.package)


# fp32 is built first by build_fp32 (the others derive from it); then these, in this order.
DERIVED_BUILDERS: dict[
    VariantName, Callable[[Validator, Graphs, Sequence[Variant]], Variant | None]
] = {
    VariantName.FP16: build_fp16,
    VariantName.INT8: build_int8,
    VariantName.INT8_W7: build_int8_w7,
    VariantName.INT8_U8: build_int8_u8,
    VariantName.INT8_WO: build_int8_wo,
    VariantName.BF16: build_bf16,
}


def calibration_feeds(package: Path, manifest: Manifest) -> list[Feeds]:
    """Graph inputs for int8 calibration: real text, tokenized and padded as the runtime does."""
    tokenizer = Tokenizer.from_file(package / TOKENIZER_FILE, manifest.max_input_length)
    texts = corpus.mixed(CALIBRATION_TEXTS, offset=CALIBRATION_OFFSET)
    feeds = []
    for start in range(0, len(texts), CALIBRATION_BATCH):
        encodings = tokenizer.encode_batch(texts[start : start + CALIBRATION_BATCH])
        feeds.append(pad(encodings, manifest.pad_token_id, manifest.uses_token_type_ids))
    return feeds


def _quantizer() -> QuantizeInt8 | None:
    try:
        module = importlib.import_module("tei_ort.export.quantize")
    except ImportError:
        return None
    function = getattr(module, "quantize_int8", None)
    return cast(QuantizeInt8, function) if callable(function) else None


def _variant(name: VariantName, validation: Validation | None, package: Path) -> Variant:
    spec = VARIANT_SPECS[name]
    data_files = graph_files.data_files(package / spec.file)
    # fp16 graphs keep float32 inputs and outputs (keep_io_types), so every variant reads float32.
    return Variant(
        name,
        spec.file,
        spec.providers,
        output_dtype="float32",
        validation=validation,
        data_files=data_files,
    )
