"""A model package built at start-up from a folder that carries an ONNX export (onnx/model.onnx or
model.onnx beside config.json and tokenizer.json), read as TEI's ONNX backend reads it: pooling
from 1_Pooling/config.json, max length from sentence_bert_config.json or the position table,
prompts from config_sentence_transformers.json, Normalize from modules.json, no Dense (as TEI's
ORT backend). The sentence-transformers files are read by tei_ort.st_config, as tei-export reads
them. The graph is linked, not copied. The user brought the graph, so it is served without
tei-export's validation, and the manifest says so."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort

from tei_ort import __version__, st_config
from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.package import (
    MANIFEST_FILE,
    TOKENIZER_FILE,
    Manifest,
    Pooling,
    Source,
    Task,
    Validation,
    Variant,
    VariantName,
    write_manifest,
)

logger = logging.getLogger(__name__)

GRAPH_LOCATIONS = ("onnx/model.onnx", "model.onnx")
# Graph outputs that hold per-token hidden states (optimum's and sentence-transformers' names).
HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
# RoBERTa-style position tables start after the padding index.
OFFSET_MODEL_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
UNVALIDATED = Validation(passed=False, texts=0, note="user-provided ONNX export, not validated")


def find_graph(folder: Path) -> Path | None:
    for relative in GRAPH_LOCATIONS:
        if (folder / relative).is_file():
            return folder / relative
    return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PackageError(f"{path}: expected a JSON object")
    return data


def _task(architecture: str, labels: int) -> Task:
    if architecture.endswith("ForSequenceClassification"):
        return Task.RERANKER if labels == 1 else Task.CLASSIFICATION
    if architecture.endswith("ForMaskedLM"):
        raise UnsupportedModel(
            f"{architecture}: a SPLADE graph needs tei-export (it adds the max over tokens)"
        )
    return Task.EMBEDDING


def _st_config(folder: Path) -> st_config.SentenceTransformersConfig:
    config = st_config.read(folder) or st_config.read_without_modules(folder)
    for dense in config.dense:
        logger.warning("%s: Dense module ignored (as TEI's ONNX backend)", dense.folder)
    return config


def _graph_io(graph: Path) -> tuple[set[str], set[str]]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph classes
        raise PackageError(f"{graph}: ONNX Runtime could not load it ({exc})") from exc
    return {i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()}


def build(
    folder: Path, out: Path, *, model_id: str, revision: str | None, pooling: Pooling | None
) -> Path:
    graph = find_graph(folder)
    if graph is None:
        raise PackageError(f"{folder}: no {' or '.join(GRAPH_LOCATIONS)}")
    if not (folder / TOKENIZER_FILE).is_file():
        raise PackageError(f"{folder}: {TOKENIZER_FILE} not found (a fast tokenizer is required)")
    config = _json(folder / "config.json")
    architecture = str((config.get("architectures") or ["BertModel"])[0])
    model_type = str(config.get("model_type", ""))
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    task = _task(architecture, len(id2label))
    inputs, outputs = _graph_io(graph)
    if task is Task.EMBEDDING:
        output_name = next((name for name in HIDDEN_OUTPUTS if name in outputs), None)
    else:
        output_name = "logits" if "logits" in outputs else None
    if output_name is None:
        raise UnsupportedModel(f"{graph}: no output the server can use (it has {sorted(outputs)})")
    st = _st_config(folder)
    if task is Task.EMBEDDING and pooling is None and st.pooling is None:
        logger.warning("%s: no pooling configured; using cls (TEI's default for BERT)", folder)
    pad_token_id = int(config.get("pad_token_id") or 0)
    offset = pad_token_id + 1 if model_type in OFFSET_MODEL_TYPES else 0
    hidden = int(config.get("hidden_size", 0))
    manifest = Manifest(
        task=task,
        architecture=architecture,
        model_type=model_type,
        hidden_size=hidden,
        dimensions=hidden,
        max_input_length=st.max_seq_length or int(config["max_position_embeddings"]) - offset,
        output_name=output_name,
        uses_token_type_ids="token_type_ids" in inputs,
        pad_token_id=pad_token_id,
        source=Source(model_id, revision),
        tool_version=__version__,
        variants=(
            Variant(VariantName.FP32, "model.onnx", ("cpu", "cuda"), validation=UNVALIDATED),
        ),
        pooling=(pooling or st.pooling or Pooling.CLS) if task is Task.EMBEDDING else None,
        normalize=st.normalize,
        prompts=dict(st.prompts),
        default_prompt_name=st.default_prompt_name,
        include_prompt=st.include_prompt,
        id2label=id2label,
    )
    out.mkdir(parents=True, exist_ok=True)
    # The graph and its external-data files, linked under the names the manifest uses.
    for item in graph.parent.iterdir():
        if item.name.startswith(graph.name):
            link = out / item.name
            link.unlink(missing_ok=True)
            link.symlink_to(item.resolve())
    shutil.copyfile(folder / TOKENIZER_FILE, out / TOKENIZER_FILE)
    write_manifest(out, manifest)
    logger.debug("built %s from %s", out / MANIFEST_FILE, graph)
    return out
