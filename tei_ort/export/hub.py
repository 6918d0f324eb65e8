"""Where a model comes from: a local folder, or a Hugging Face hub repo downloaded through
huggingface_hub (revision, token, cache folder), fetching only the files export reads."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tei_ort import hub_errors
from tei_ort.errors import PackageError

logger = logging.getLogger(__name__)

# Everything export reads except the transformer weights, which are picked after listing the repo
# (safetensors when present, so that a repo with both never downloads the .bin twice over).
METADATA_PATTERNS: tuple[str, ...] = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",  # 1_Pooling, 2_Dense, a 0_Transformer subfolder
    "*/sentence_bert_config.json",
    "*/tokenizer.json",
    "*/tokenizer_config.json",
    "*/special_tokens_map.json",
    "*Dense*/model.safetensors",
    "*Dense*/pytorch_model.bin",
)
# Weight layouts, best first: (file that must exist, patterns that fetch the layout).
WEIGHT_LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model.safetensors", ("model.safetensors",)),
    ("model.safetensors.index.json", ("model.safetensors.index.json", "model-*.safetensors")),
    ("pytorch_model.bin", ("pytorch_model.bin",)),
    ("pytorch_model.bin.index.json", ("pytorch_model.bin.index.json", "pytorch_model-*.bin")),
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class Location:
    folder: Path  # a local folder holding the files
    model_id: str  # what the user named: a hub repo id or the folder path
    revision: str | None  # the hub commit the files came from; None for a local folder


def locate(
    model: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: Path | None = None,
) -> Location:
    path = Path(model).expanduser()
    if path.is_dir():
        return Location(path.resolve(), str(path.resolve()), revision)
    if path.exists() or not _REPO_ID.match(model):
        raise PackageError(f"{model}: not a model folder and not a hub repo id (owner/name)")
    return _download(model, revision, token, cache_dir)


def _download(
    repo_id: str, revision: str | None, token: str | None, cache_dir: Path | None
) -> Location:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = str(cache_dir) if cache_dir else None
    logger.info("downloading %s (revision %s) from the hub", repo_id, revision or "main")
    try:
        try:
            files = set(huggingface_hub.list_repo_files(repo_id, revision=revision, token=token))
        except hub_errors.UNREACHABLE:
            # The hub is down or HF_HUB_OFFLINE is set: serve the revision from the cache.
            logger.warning("%s: the hub cannot be reached; using the cached copy", repo_id)
            folder = huggingface_hub.snapshot_download(
                repo_id, revision=revision, token=token, cache_dir=cache, local_files_only=True
            )
            return _location(Path(folder), repo_id, revision)
        prefix = _transformer_prefix(files)
        weights = _weight_patterns(files, prefix, repo_id)
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache,
            allow_patterns=[*METADATA_PATTERNS, *weights],
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        # OSError covers connection failures mid-download and offline mode with nothing cached.
        raise hub_errors.describe(exc, repo_id, revision) from exc
    return _location(Path(folder), repo_id, revision)


def _location(folder: Path, repo_id: str, revision: str | None) -> Location:
    commit = folder.name if _COMMIT.match(folder.name) else revision
    return Location(folder, repo_id, commit)


def _transformer_prefix(files: set[str]) -> str:
    """Old sentence-transformers repos keep the transformer in 0_Transformer/."""
    if "config.json" in files:
        return ""
    return "0_Transformer/" if "0_Transformer/config.json" in files else ""


def _weight_patterns(files: set[str], prefix: str, repo_id: str) -> tuple[str, ...]:
    for marker, patterns in WEIGHT_LAYOUTS:
        if prefix + marker in files:
            return tuple(prefix + p for p in patterns)
    expected = ", ".join(marker for marker, _ in WEIGHT_LAYOUTS)
    raise PackageError(f"{repo_id}: no model weights in the repo (expected one of {expected})")
