"""The sentence-transformers side of a model folder, read as sentence-transformers and TEI read it:
modules.json (Transformer -> Pooling -> Dense* -> Normalize), 1_Pooling/config.json,
sentence_bert_config.json (max_seq_length), config_sentence_transformers.json (prompts).

The one reader of these files for both stages: tei-export (export/source.py) and the server's
packages built around a user's ONNX export (serve/onnx_package.py). It is in the core because the
serving path may not import tei_ort.export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.package import Activation, Pooling

MODULES_FILE = "modules.json"

# 1_Pooling/config.json flag -> our pooling; the flags we cannot serve are rejected by name.
POOLING_FLAGS: dict[str, Pooling] = {
    "pooling_mode_cls_token": Pooling.CLS,
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_lasttoken": Pooling.LAST_TOKEN,
}
UNSUPPORTED_POOLING_FLAGS = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
# sentence-transformers >= 5 writes "pooling_mode": "<name>" instead of the flags.
POOLING_NAMES: dict[str, Pooling] = {
    "cls": Pooling.CLS,
    "mean": Pooling.MEAN,
    "lasttoken": Pooling.LAST_TOKEN,
}

# Dense `activation_function` (a torch class path) -> activation, by its last component.
DENSE_ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation.IDENTITY,
    "tanh": Activation.TANH,
    "relu": Activation.RELU,
    "gelu": Activation.GELU,
    "sigmoid": Activation.SIGMOID,
}
DENSE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
POOLING_CONFIG = "1_Pooling/config.json"  # where TEI looks when modules.json is absent


@dataclass(frozen=True)
class DenseSource:
    folder: str  # relative to the source root, e.g. "2_Dense"
    # Relative to the source root; None when absent (the server's ONNX path fetches only the
    # JSON files and ignores Dense, as TEI's ONNX backend; export refuses a Dense without weights).
    weights: str | None
    in_features: int
    out_features: int
    has_bias: bool
    activation: Activation


@dataclass(frozen=True)
class SentenceTransformersConfig:
    transformer_path: str  # "" or e.g. "0_Transformer": where the HF model files are
    pooling: Pooling | None
    normalize: bool
    dense: tuple[DenseSource, ...]
    max_seq_length: int | None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    # 1_Pooling's include_prompt: false leaves the prompt's tokens out of the pooling (NV-Embed-v2,
    # INSTRUCTOR-style models); the runtime masks them (Encoded.prompt_tokens).
    include_prompt: bool = True
    is_sparse: bool = False  # a SparseEncoder (MLMTransformer + SpladePooling)
    read_files: tuple[str, ...] = ()  # relative paths read, for the source hashes


def read(root: Path) -> SentenceTransformersConfig | None:
    """None when the folder is not a sentence-transformers model (no modules.json)."""
    if not (root / MODULES_FILE).is_file():
        return None
    modules = read_json_value(root, MODULES_FILE)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise PackageError(f"{MODULES_FILE}: expected a list of modules")
    read_files = [MODULES_FILE]
    transformer_path = ""
    pooling: Pooling | None = None
    normalize = is_sparse = False
    include_prompt = True
    dense: list[DenseSource] = []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = str(module.get("path", ""))
        if kind in ("Transformer", "MLMTransformer"):
            transformer_path = path
        elif kind == "Pooling":
            pooling, include_prompt = read_pooling(root, f"{path}/config.json")
            read_files.append(f"{path}/config.json")
        elif kind == "SpladePooling":
            _check_splade(root, f"{path}/config.json")
            read_files.append(f"{path}/config.json")
            is_sparse = True
        elif kind == "Dense":
            dense.append(_read_dense(root, path))
            read_files.append(f"{path}/config.json")
            read_files += [dense[-1].weights] if dense[-1].weights is not None else []
        elif kind == "Normalize":
            normalize = True
        else:
            raise UnsupportedModel(
                f"{MODULES_FILE}: module type {module.get('type')!r} is not supported"
            )
    max_seq_length = _read_max_seq_length(root, transformer_path, read_files)
    prompts, default_prompt = _read_prompts(root, read_files)
    return SentenceTransformersConfig(
        transformer_path=transformer_path,
        pooling=pooling,
        normalize=normalize,
        dense=tuple(dense),
        max_seq_length=max_seq_length,
        prompts=prompts,
        default_prompt_name=default_prompt,
        include_prompt=include_prompt,
        is_sparse=is_sparse,
        read_files=tuple(read_files),
    )


def read_without_modules(root: Path) -> SentenceTransformersConfig:
    """A folder without modules.json, read as TEI's ONNX backend reads one: pooling from
    1_Pooling/config.json when present, no Dense or Normalize, max length and prompts as usual."""
    read_files: list[str] = []
    pooling = None
    include_prompt = True
    if (root / POOLING_CONFIG).is_file():
        pooling, include_prompt = read_pooling(root, POOLING_CONFIG)
        read_files.append(POOLING_CONFIG)
    max_seq_length = _read_max_seq_length(root, "", read_files)
    prompts, default_prompt = _read_prompts(root, read_files)
    return SentenceTransformersConfig(
        transformer_path="",
        pooling=pooling,
        normalize=False,
        dense=(),
        max_seq_length=max_seq_length,
        prompts=prompts,
        default_prompt_name=default_prompt,
        include_prompt=include_prompt,
        read_files=tuple(read_files),
    )


def read_pooling(root: Path, relative: str) -> tuple[Pooling, bool]:
    """The pooling mode and include_prompt (whether the prompt's tokens are pooled)."""
    config = read_json(root, relative)
    include_prompt = config.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise PackageError(f"{relative}: include_prompt must be true or false")
    return _pooling_mode(config, relative), include_prompt


def _pooling_mode(config: dict[str, Any], relative: str) -> Pooling:
    if "pooling_mode" in config:
        name = str(config["pooling_mode"])
        if name not in POOLING_NAMES:
            raise UnsupportedModel(
                f"{relative}: pooling mode {name!r}; supported: {', '.join(POOLING_NAMES)}"
            )
        return POOLING_NAMES[name]
    unsupported = [flag for flag in UNSUPPORTED_POOLING_FLAGS if config.get(flag)]
    modes = [pooling for flag, pooling in POOLING_FLAGS.items() if config.get(flag)]
    if unsupported or len(modes) != 1:
        raise UnsupportedModel(
            f"{relative}: exactly one of {', '.join(POOLING_FLAGS)} must be set "
            f"(found {', '.join(unsupported) or 'none or several'})"
        )
    return modes[0]


def _check_splade(root: Path, relative: str) -> None:
    config = read_json(root, relative) if (root / relative).is_file() else {}
    strategy = config.get("pooling_strategy", "max")
    activation = config.get("activation_function", "relu")
    if strategy != "max" or activation != "relu":
        raise UnsupportedModel(f"{relative}: SPLADE pooling {strategy}/{activation}; only max/relu")


def _read_dense(root: Path, path: str) -> DenseSource:
    relative = f"{path}/config.json"
    config = read_json(root, relative)
    weights = next((f"{path}/{w}" for w in DENSE_WEIGHT_FILES if (root / path / w).is_file()), None)
    function = str(config.get("activation_function", "identity")).rsplit(".", 1)[-1].lower()
    if function not in DENSE_ACTIVATIONS:
        raise UnsupportedModel(
            f"{relative}: Dense activation {function!r}; supported: {', '.join(DENSE_ACTIVATIONS)}"
        )
    try:
        in_features, out_features = int(config["in_features"]), int(config["out_features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{relative}: in_features/out_features missing or malformed") from exc
    return DenseSource(
        folder=path,
        weights=weights,
        in_features=in_features,
        out_features=out_features,
        has_bias=bool(config.get("bias", True)),
        activation=DENSE_ACTIVATIONS[function],
    )


def _read_max_seq_length(root: Path, transformer_path: str, read_files: list[str]) -> int | None:
    for folder in dict.fromkeys((transformer_path, "")):
        relative = f"{folder}/sentence_bert_config.json" if folder else "sentence_bert_config.json"
        if (root / relative).is_file():
            read_files.append(relative)
            value = read_json(root, relative).get("max_seq_length")
            return int(value) if isinstance(value, int) and value > 0 else None
    return None


def _read_prompts(root: Path, read_files: list[str]) -> tuple[dict[str, str], str | None]:
    relative = "config_sentence_transformers.json"
    if not (root / relative).is_file():
        return {}, None
    read_files.append(relative)
    config = read_json(root, relative)
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict):
        raise PackageError(f"{relative}: prompts must be an object")
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise PackageError(f"{relative}: default_prompt_name {default!r} is not in prompts")
    return {str(k): str(v) for k, v in prompts.items()}, default


def read_json(root: Path, relative: str) -> dict[str, Any]:
    """A JSON object from a model file; a missing or broken file is an error naming it."""
    data = read_json_value(root, relative)
    if not isinstance(data, dict):
        raise PackageError(f"{relative}: expected a JSON object")
    return data


def read_json_value(root: Path, relative: str) -> object:
    path = root / relative
    try:
        data: object = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{relative}: not found in {root}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{relative}: not valid JSON ({exc})") from exc
    return data
