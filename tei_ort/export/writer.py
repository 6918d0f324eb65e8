"""The files of a model package beside its graphs: the cleaned tokenizer, the source config, the
Dense layers as .npz, the manifest, and the export record that lets a re-export be skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tei_ort.errors import PackageError
from tei_ort.export import special_tokens
from tei_ort.export.source import (
    CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_CONFIG_FILE,
    SourceModel,
)
from tei_ort.package import EXPORT_RECORD_FILE, TOKENIZER_FILE, DenseLayer
from tei_ort.st_config import DenseSource


def write_tokenizer(source: SourceModel, package: Path) -> None:
    """Copy tokenizer.json with truncation and padding switched off: shipped files often bake them
    in (all-MiniLM-L6-v2's pads every input to 128 and cuts at 128, below its max_seq_length of
    256), and the runtime sets both itself from the manifest. Llama- and Gemma-class tokenizers
    get the BOS/EOS template transformers builds from tokenizer_config.json (special_tokens)."""
    try:
        data = json.loads(source.tokenizer_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{TOKENIZER_FILE}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise PackageError(f"{TOKENIZER_FILE}: not a tokenizers file (no model)")
    data = _with_special_tokens(data, source)
    data["truncation"] = None
    data["padding"] = None
    (package / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _with_special_tokens(data: dict[str, Any], source: SourceModel) -> dict[str, Any]:
    from tokenizers import Tokenizer

    config = _json_object(source.model_dir / TOKENIZER_CONFIG_FILE)
    # transformers lets special_tokens_map.json override tokenizer_config.json's token strings.
    config |= _json_object(source.model_dir / SPECIAL_TOKENS_FILE)
    tokenizer = Tokenizer.from_str(json.dumps(data))
    if special_tokens.apply(tokenizer, config, source.model_type) is None:
        return data
    rebuilt: dict[str, Any] = json.loads(tokenizer.to_str())
    return rebuilt


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path.name}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def write_config(source: SourceModel, package: Path) -> None:
    shutil.copyfile(source.model_dir / CONFIG_FILE, package / CONFIG_FILE)


def write_dense(source: SourceModel, package: Path) -> tuple[DenseLayer, ...]:
    layers = []
    dense = source.st.dense if source.st is not None else ()
    for index, layer in enumerate(dense):
        weight, bias = _load_dense(source.root, layer)
        name = f"dense_{index}.npz"
        np.savez(package / name, weight=weight, bias=bias)
        layers.append(DenseLayer(name, layer.in_features, layer.out_features, layer.activation))
    return tuple(layers)


def _load_dense(
    root: Path, layer: DenseSource
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(out, in) weight and (out,) bias of a sentence-transformers Dense (`linear.*` tensors)."""
    if layer.weights is None:  # read_source refuses this; here for the type checker
        raise PackageError(f"{layer.folder}: no Dense weights")
    path = root / layer.weights
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    else:
        import torch

        tensors = {
            k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
        }
    if "linear.weight" not in tensors:
        raise PackageError(f"{layer.weights}: no linear.weight tensor")
    weight = np.asarray(tensors["linear.weight"], dtype=np.float32)  # (out, in)
    if weight.shape != (layer.out_features, layer.in_features):
        raise PackageError(
            f"{layer.weights}: weight is {weight.shape}, config says "
            f"({layer.out_features}, {layer.in_features})"
        )
    bias = np.asarray(tensors.get("linear.bias", np.zeros(layer.out_features)), dtype=np.float32)
    return weight, bias  # bias (out,)


def read_export_key(package: Path) -> str | None:
    try:
        record = json.loads((package / EXPORT_RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    key = record.get("cache_key") if isinstance(record, dict) else None
    return key if isinstance(key, str) else None


def write_export_record(package: Path, cache_key: str, inputs: dict[str, Any]) -> None:
    record = {"cache_key": cache_key, "inputs": inputs}
    (package / EXPORT_RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
