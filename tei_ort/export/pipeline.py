"""tei-export end to end: source -> plan -> raw and fused graphs -> package files -> variants,
each validated against the PyTorch reference -> manifest (with every file's sha256), written in a
staging folder and renamed into place under a lock (publish.py). Re-exporting the same input with
the same options and tool version reuses the package, when its files pass the integrity check."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tei_ort import __version__, integrity
from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.export import (
    calibration,
    checkpoints,
    fuse,
    graph_files,
    m3_heads,
    m3_reference,
    publish,
    recipes,
    writer,
)
from tei_ort.export.architectures import decoders, llm_rerank
from tei_ort.export.hub import locate
from tei_ort.export.onnx_export import DEFAULT_OPSET, add_head, export_onnx
from tei_ort.export.runners import Subject
from tei_ort.export.source import CONFIG_FILE, SourceModel, read_source
from tei_ort.export.validate import validation_set
from tei_ort.export.variants import (
    DERIVED_BUILDERS,
    VARIANT_SPECS,
    Graphs,
    Validator,
    build_fp32,
)
from tei_ort.package import (
    Manifest,
    Pooling,
    Source,
    Task,
    Variant,
    VariantName,
    is_package,
    read_manifest,
    write_manifest,
)
from tei_ort.runtime.fidelity_check import write_fidelity_set

logger = logging.getLogger(__name__)

ALL_VARIANTS = (
    VariantName.FP32,
    VariantName.FP16,
    VariantName.INT8,
    VariantName.INT8_W7,
    VariantName.INT8_U8,  # derived from int8's graph (variants.build_int8_u8); opt-in, below
    VariantName.INT8_WO,  # decoders only (variants.build_int8_wo)
    VariantName.BF16,
)
# Built only when asked for (`--variants ...,int8-u8`; CI's `validate` builds every variant).
# int8-u8 is exact where int8 saturates (AVX2, AVX-512 without VNNI) but MLAS's u8u8 GEMM ran
# slower than fp32 on the AMX Xeon, with both kernels at the same AVX-512 width (CPU time, one
# thread: all-MiniLM-L6-v2 0.85x, a BERT-base-sized encoder 0.88x; int8 1.32x / 2.28x), so by
# default it would cost every export and first start a variant the trial is not expected to pick.
OPT_IN_VARIANTS = (VariantName.INT8_U8,)
DEFAULT_VARIANTS = tuple(v for v in ALL_VARIANTS if v not in OPT_IN_VARIANTS)
WORK_DIR = ".work"


@dataclass(frozen=True)
class ExportOptions:
    task: Task | None = None  # None: detected from the files
    pooling: Pooling | None = None  # None: from 1_Pooling/config.json
    variants: tuple[VariantName, ...] = (
        DEFAULT_VARIANTS  # fp32 is always built: the others derive from it
    )
    opset: int = DEFAULT_OPSET
    validation_queries: int = 64
    validation_passages: int = 192
    # Graphs larger than this keep their tensors in `<graph>.data` (protobuf's 2 GiB limit);
    # tests lower it to send a tiny model down that path.
    external_data_threshold_bytes: int = graph_files.EXTERNAL_DATA_THRESHOLD_BYTES


@dataclass(frozen=True)
class HubOptions:
    revision: str | None = None
    token: str | None = None
    cache_dir: Path | None = None


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    reused: bool
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time


def export_model(
    model: str,
    out: Path,
    options: ExportOptions | None = None,
    hub: HubOptions | None = None,
    *,
    integrity_cache: Path | None = None,
    reuse_checked: bool = False,
) -> ExportResult:
    """Export `model` into the package folder `out`, or reuse the package there when it was
    exported from the same sources with the same options and tool version and its files pass the
    integrity check (`integrity_cache`: where verified digests are remembered; None hashes every
    file). Crash-safe and one export at a time per folder: see tei_ort.export.publish.
    `reuse_checked`: the caller has just called `reusable` and got None, so only the check under
    the lock remains (another process may export it meanwhile)."""
    options = options or ExportOptions()
    hub = hub or HubOptions()
    timer = _Timer()
    source = _read(model, hub)
    subject = plan(source, options)
    key, key_inputs = cache_key(source, options)
    timer.lap("source")  # locate (download), read, hash
    if not reuse_checked and (reused := _reused(out, key, integrity_cache, timer)):
        return reused
    # Before torch, transformers or sentence-transformers open any pickle checkpoint.
    checkpoints.check(source.root, source.files)
    publish.check_target(out)
    with publish.export_lock(out):
        # Another process may have exported it while this one waited for the lock.
        if reused := _reused(out, key, integrity_cache, timer):
            return reused
        staging = publish.staging_folder(out)
        try:
            manifest = _export(subject, staging, options, timer)
            writer.write_export_record(staging, key, key_inputs)
            publish.publish(staging, out)
        except OSError as exc:
            publish.discard(staging)
            raise publish.write_error(exc, out) from exc
        except BaseException:
            publish.discard(staging)
            raise
    logger.info("%s -> %s in %.1f s: %s", model, out, sum(timer.seconds.values()), timer.seconds)
    return ExportResult(out, manifest, reused=False, seconds=timer.seconds)


def reusable(
    model: str,
    out: Path,
    options: ExportOptions | None = None,
    hub: HubOptions | None = None,
    *,
    integrity_cache: Path | None = None,
) -> ExportResult | None:
    """The package in `out` when `export_model` would reuse it, else None (logging why when there
    is one): the check alone, without torch, so a caller may run the export itself elsewhere."""
    options = options or ExportOptions()
    hub = hub or HubOptions()
    timer = _Timer()
    key, _ = cache_key(_read(model, hub), options)
    timer.lap("source")
    return _reused(out, key, integrity_cache, timer)


def _read(model: str, hub: HubOptions) -> SourceModel:
    """The source model: located (downloaded from the hub when needed) and read."""
    return read_source(
        locate(model, revision=hub.revision, token=hub.token, cache_dir=hub.cache_dir)
    )


def _reused(
    out: Path, key: str, integrity_cache: Path | None, timer: _Timer
) -> ExportResult | None:
    if not _reusable(out, key, integrity_cache):
        return None
    return ExportResult(out, read_manifest(out), reused=True, seconds=timer.seconds)


def _reusable(out: Path, key: str, integrity_cache: Path | None) -> bool:
    if not is_package(out) or writer.read_export_key(out) != key:
        return False
    try:
        report = integrity.verify(out, integrity_cache)
    except PackageError as exc:
        logger.warning(
            "%s: the package there fails its integrity check (%s); exporting again", out, exc
        )
        return False
    if report.files == 0:  # exported before the digests: export again, to have them
        logger.info("%s: %s; exporting again", out, report.describe())
        return False
    logger.info(
        "reusing the package in %s (same sources, options, tool version; %s)",
        out,
        report.describe(),
    )
    return True


def _export(subject: Subject, package: Path, options: ExportOptions, timer: _Timer) -> Manifest:
    """Every file of the package, written into `package` (a staging folder); the manifest last,
    with the digest of every other file."""
    work = package / WORK_DIR
    work.mkdir()
    try:
        graphs = _graphs(subject, work, options, timer)
        base = _base_manifest(subject, package)
        vset = validation_set(options.validation_queries, options.validation_passages)
        # BGE-M3's heads run on the encoder its dense reference loaded: one load, not two.
        reference, heads = m3_reference.references(subject, base.token_heads, package, vset)
        write_fidelity_set(package, vset, reference, heads)
        timer.lap("reference")
        validator = Validator(package, base, subject, vset, reference, heads)
        variants: list[Variant] = [build_fp32(validator, graphs)]
        timer.lap("fp32")
        for name, build in DERIVED_BUILDERS.items():
            if name in options.variants:
                built = build(validator, graphs, variants)
                variants += [built] if built is not None else []
                timer.lap(name.value)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = replace(base, variants=tuple(variants))
    _remove_unlisted_graphs(package, manifest)
    write_manifest(package, manifest)  # calibration loads the fp32 graph through the runtime
    calibration.calibrate(package)  # int8/uint8 embedding ranges, covered by the digests below
    timer.lap("calibration")
    manifest = replace(manifest, files=integrity.digest_files(package))
    write_manifest(package, manifest)
    return manifest


def plan(source: SourceModel, options: ExportOptions) -> Subject:
    """Task (detected, or overridden), the recipe exporting it, and the pooling for embeddings."""
    detected = recipes.detect_task(
        source.architecture, source.num_labels, is_sentence_transformers=source.st is not None
    )
    if source.st is not None and source.st.is_sparse:
        detected = Task.SPARSE_EMBEDDING
    if llm_rerank.template_for(source) is not None:  # Qwen3-Reranker: a causal LM, no ST files
        detected = Task.RERANKER
    task = options.task or detected
    recipe = recipes.for_task(source.architecture, task)
    pooling = None
    if task is Task.EMBEDDING:
        pooling = options.pooling or (source.st.pooling if source.st is not None else None)
        # NVIDIA's bidirectional Llama names its pooling in config.json ("avg").
        pooling = pooling or decoders.config_pooling(
            json.loads((source.model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        )
        if pooling is None:
            raise UnsupportedModel(
                f"{source.location.model_id}: no pooling configuration (1_Pooling/config.json); "
                f"pass --pooling ({', '.join(p.value for p in Pooling if p is not Pooling.SPLADE)})"
            )
        if pooling is Pooling.SPLADE:
            raise UnsupportedModel("pooling 'splade' means --task sparse_embedding on a masked LM")
    if (template := llm_rerank.template_for(source)) is not None:
        if task is not Task.RERANKER:
            raise UnsupportedModel(
                f"{source.architecture} without sentence-transformers files "
                "is an LLM re-ranker; it exports only as --task reranker"
            )
        limit = min(source.tokenizer_max_length or template.max_length, template.max_length)
        source = replace(source, id2label={0: llm_rerank.LABEL}, tokenizer_max_length=limit)
    if task in (Task.CLASSIFICATION, Task.RERANKER) and source.num_labels < 1:
        raise UnsupportedModel(f"{source.architecture}: a classifier needs id2label in config.json")
    return Subject(source, recipe, task, pooling)


# The code whose change changes a package or its validation (the exporter, its validation texts
# and bars, the runtime that runs each variant): a source tree edited between two exports
# re-exports, rather than reusing a package whose manifest another version of the code wrote.
_CODE = ("export", "runtime", "fidelity.py", "package.py")


@functools.cache
def code_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for part in _CODE:
        files = [root / part] if part.endswith(".py") else sorted((root / part).rglob("*.py"))
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_key(source: SourceModel, options: ExportOptions) -> tuple[str, dict[str, object]]:
    inputs: dict[str, object] = {
        "files": source.files,
        "tool_version": __version__,
        "code": code_digest(),
        "options": json.loads(json.dumps(asdict(options), default=str)),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest, inputs


def _graphs(subject: Subject, work: Path, options: ExportOptions, timer: _Timer) -> Graphs:
    source = subject.source
    raw, fused = work / "raw.onnx", work / "fused.onnx"
    threshold = options.external_data_threshold_bytes
    export_onnx(
        source.model_dir, subject.recipe, raw, opset=options.opset, threshold_bytes=threshold
    )
    timer.lap("onnx_export")
    report = fuse.fuse(
        raw,
        fused,
        subject.recipe,
        num_heads=source.num_attention_heads,
        hidden_size=source.hidden_size,
        threshold_bytes=threshold,
    )
    add_head(raw, subject.recipe, threshold)
    add_head(fused, subject.recipe, threshold)
    timer.lap("fuse")
    return Graphs(raw, fused, report, threshold)


def _base_manifest(subject: Subject, out: Path) -> Manifest:
    """Everything but the variants; writes the tokenizer, config and Dense files it names."""
    source, recipe, task = subject.source, subject.recipe, subject.task
    writer.write_tokenizer(source, out)
    writer.write_config(source, out)
    dense = writer.write_dense(source, out) if task is Task.EMBEDDING else ()
    st = source.st
    dimensions = {
        Task.EMBEDDING: dense[-1].out_features if dense else source.hidden_size,
        Task.SPARSE_EMBEDDING: source.vocab_size,
        Task.CLASSIFICATION: source.hidden_size,
        Task.RERANKER: source.hidden_size,
    }[task]
    return Manifest(
        task=task,
        architecture=source.architecture,
        model_type=source.model_type,
        hidden_size=source.hidden_size,
        dimensions=dimensions,
        max_input_length=source.max_input_length(),
        output_name=recipe.head.output_name,
        uses_token_type_ids=recipe.family.uses_token_type_ids,
        pad_token_id=source.pad_token_id,
        source=Source(source.location.model_id, source.location.revision, dict(source.files)),
        tool_version=__version__,
        variants=(),
        pooling=Pooling.SPLADE if task is Task.SPARSE_EMBEDDING else subject.pooling,
        normalize=bool(st and st.normalize) and task is Task.EMBEDDING,
        dense=dense,
        prompts=dict(st.prompts) if st else {},
        default_prompt_name=st.default_prompt_name if st else None,
        include_prompt=st.include_prompt if st else True,
        id2label=dict(source.id2label) if task in (Task.CLASSIFICATION, Task.RERANKER) else {},
        pair_template=llm_rerank.template_for(source) if task is Task.RERANKER else None,
        token_heads=m3_heads.write(source, out) if task is Task.EMBEDDING else None,
    )


def _remove_unlisted_graphs(out: Path, manifest: Manifest) -> None:
    """Graphs this manifest does not list (a variant the quantizer could not build, or one that
    was written and then dropped)."""
    listed = {variant.file for variant in manifest.variants}
    listed |= {name for variant in manifest.variants for name in variant.data_files}
    for spec in VARIANT_SPECS.values():
        for name in (spec.file, graph_files.data_file(Path(spec.file)).name):
            if name not in listed:
                (out / name).unlink(missing_ok=True)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._start, 2)
        self._start = now
