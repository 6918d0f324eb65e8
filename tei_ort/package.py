"""The model package: one self-contained folder per model, written by `tei-export`, read by the
runtime and the server.

Layout of a package folder::

    manifest.json        this module's Manifest, versioned by FORMAT_VERSION
    tokenizer.json       the Rust tokenizer, truncation and padding switched off (the runtime sets them)
    model.onnx           fp32 graph (fused); other variants beside it (model.fp16.onnx, model.int8.onnx)
    dense_0.npz ...      sentence-transformers Dense layers (weight (out, in), bias (out,)), if any
    config.json          the source config.json, kept for reference
    fidelity.npz         the validation texts and the PyTorch reference outputs for them, so that a
                         server on a CPU of another class can re-validate a variant before serving
                         it (tei_ort.runtime.fidelity_check); plain arrays, read without pickle
    embedding_ranges.npz dense embedders: per-dimension min / max of the fp32 vectors on calibration
                         texts, for int8 / uint8 embeddings (tei_ort.runtime.quantized_embeddings)
    export.json          the export's cache key (source hashes, options, tool version): a second
                         export of the same input reuses the package
    checks.json          written by the server, not the export: what each machine that served the
                         package measured (re-validations, trial speeds; tei_ort.runtime.checks)

The manifest lists the size and sha256 of every other file but export.json and checks.json
(`Manifest.files`); tei_ort.integrity checks them before a package is served. An export writes the
package in a staging folder beside the target and renames it into place once complete
(tei_ort.export.publish), so a package folder is either whole or absent.

The manifest is the only thing the serving path reads to know what a graph does. Every graph takes
`input_ids`, `attention_mask` and, when `Manifest.uses_token_type_ids`, `token_type_ids`, each
(batch, seq) int64, and has one output named by `Manifest.output_name`:

- embedding tasks: `last_hidden_state` (batch, seq, hidden); pooling happens in the runtime.
- sparse embedding: `sparse_embedding` (batch, vocab), the SPLADE max over tokens computed in the graph
  (a (batch, seq, vocab) tensor would not fit in memory for large batches).
- classification / reranking: `logits` (batch, num_labels).
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tei_ort.errors import PackageError
from tei_ort.pair_template import PairTemplate

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_RECORD_FILE = "export.json"
CHECKS_FILE = "checks.json"


class Task(str, enum.Enum):
    EMBEDDING = "embedding"
    SPARSE_EMBEDDING = "sparse_embedding"
    CLASSIFICATION = "classification"
    RERANKER = "reranker"


class Pooling(str, enum.Enum):
    CLS = "cls"
    MEAN = "mean"
    LAST_TOKEN = "last_token"
    SPLADE = "splade"


class VariantName(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    # int8 with 7-bit weights: no u8s8 GEMM saturates its int16 pair sums (AVX2 and AVX-512
    # without VNNI do with 8-bit weights), so it computes the same integers on every CPU.
    INT8_W7 = "int8-w7"
    # int8's weights stored as uint8 (w + 128, zero point 128): MLAS then runs its u8u8 GEMM,
    # exact at 8-bit weight precision where the u8s8 one saturates (AVX2, AVX-512 without VNNI).
    INT8_U8 = "int8-u8"
    # int8 weights only (MatMulNBits, blocks of 32 with one scale each), no activation
    # calibration: decoders, whose weights are most of their bytes and CPU time.
    INT8_WO = "int8-wo"
    # The fp32 graph compiled by OpenVINO at bfloat16 inference precision (AMX / AVX512_BF16).
    BF16 = "bf16"


class Activation(str, enum.Enum):
    """Activations of sentence-transformers Dense layers and classifier outputs."""

    IDENTITY = "identity"
    TANH = "tanh"
    RELU = "relu"
    GELU = "gelu"
    SIGMOID = "sigmoid"
    SOFTMAX = "softmax"


@dataclass(frozen=True)
class Validation:
    """How a variant compares with the PyTorch reference on real text (figures over all texts)."""

    passed: bool
    texts: int
    cosine_min: float | None = None
    cosine_mean: float | None = None
    max_abs_diff: float | None = None
    overlap_at_10: float | None = None
    note: str = ""
    # Where the figures were measured: kernels (and so int8 fidelity) differ per CPU class, so
    # the runtime re-validates a variant on a CPU of another class before serving it.
    isa_class: str = ""  # tei_ort.runtime.cpu.IsaClass value; "" in packages from before it
    provider: str = ""  # the provider that ran it: "cpu" (ONNX Runtime's CPU EP), "openvino"
    engine: str = ""  # e.g. "onnxruntime 1.23.2", "openvino 2025.3.0"


@dataclass(frozen=True)
class Variant:
    name: VariantName
    file: str
    # Execution providers the variant is meant for, best first ("cpu", "cuda").
    providers: tuple[str, ...]
    # Element type of the graph's float outputs: "float32" or "float16".
    output_dtype: str = "float32"
    validation: Validation | None = None
    # The graph's external-data files (tensors of a graph over 2 GB; "model.onnx.data"), which
    # ONNX Runtime reads from beside the graph; the integrity check requires their digests.
    data_files: tuple[str, ...] = ()

    @property
    def is_servable(self) -> bool:
        return self.validation is not None and self.validation.passed


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module: y = activation(x @ weight.T + bias)."""

    file: str
    in_features: int
    out_features: int
    activation: Activation = Activation.IDENTITY


@dataclass(frozen=True)
class TokenHeads:
    """BGE-M3's heads over the graph's last_hidden_state, applied by the runtime in numpy
    (tei_ort/runtime/outputs.py): `sparse` (an .npz of weight (1, hidden) and bias (1,)) gives
    relu(h @ w.T + b) per token, max over repeats of a token id, `unused_token_ids` dropped;
    `colbert` (weight (dim, hidden), bias (dim,)) gives one normalized vector per token after
    the first. Each file is None when the checkpoint has no such head."""

    sparse: str | None = None
    colbert: str | None = None
    unused_token_ids: tuple[int, ...] = ()
    vocab_size: int = 0  # config.json's: the length of a sparse vector


@dataclass(frozen=True)
class Source:
    model_id: str
    revision: str | None
    # file name (relative to the source folder) -> sha256 hex digest
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileDigest:
    """A package file as the export wrote it (tei_ort.integrity checks it before serving)."""

    sha256: str
    size: int  # bytes; a mismatch names a truncated file without hashing it


@dataclass(frozen=True)
class Manifest:
    task: Task
    architecture: str  # config.json architectures[0], e.g. "BertModel"
    model_type: str  # config.json model_type, e.g. "bert"
    hidden_size: int
    # Vector size served: the last Dense layer's out_features, else hidden_size, else vocab (SPLADE).
    dimensions: int
    max_input_length: int
    output_name: str
    uses_token_type_ids: bool
    pad_token_id: int
    source: Source
    tool_version: str
    variants: tuple[Variant, ...]
    pooling: Pooling | None = None
    normalize: bool = False
    dense: tuple[DenseLayer, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    # False: the prompt's tokens are left out of the pooling (sentence-transformers' Pooling
    # include_prompt=false), counted per input as Encoded.prompt_tokens.
    include_prompt: bool = True
    # Classification: index -> label. Softmax when several labels, sigmoid for one (TEI's rule).
    id2label: dict[int, str] = field(default_factory=dict)
    # LLM re-rankers (Qwen3-Reranker): how a (query, document) pair becomes ids; None elsewhere.
    pair_template: PairTemplate | None = None
    # BGE-M3's sparse and ColBERT heads (embedding packages whose source has them); else None.
    token_heads: TokenHeads | None = None
    # Every package file but manifest.json, export.json and checks.json: relative path -> digest.
    # Empty in packages exported before tei_ort recorded them (served unverified, with a warning).
    files: dict[str, FileDigest] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def variant(self, name: VariantName | str) -> Variant:
        for variant in self.variants:
            if variant.name == VariantName(name):
                return variant
        raise PackageError(
            f"variant {VariantName(name).value!r} is not in this package; it has "
            f"{', '.join(v.name.value for v in self.variants)}"
        )

    def to_json(self) -> str:
        return json.dumps(_plain(asdict(self)), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise PackageError(
                f"{MANIFEST_FILE}: format_version {version!r} is not supported "
                f"(this tei_ort reads version {FORMAT_VERSION}); re-export the model with tei-export"
            )
        try:
            return cls(
                task=Task(data["task"]),
                architecture=data["architecture"],
                model_type=data["model_type"],
                hidden_size=int(data["hidden_size"]),
                dimensions=int(data["dimensions"]),
                max_input_length=int(data["max_input_length"]),
                output_name=data["output_name"],
                uses_token_type_ids=bool(data["uses_token_type_ids"]),
                pad_token_id=int(data["pad_token_id"]),
                source=Source(**data["source"]),
                tool_version=data["tool_version"],
                variants=tuple(
                    Variant(
                        name=VariantName(v["name"]),
                        file=v["file"],
                        providers=tuple(v["providers"]),
                        output_dtype=v.get("output_dtype", "float32"),
                        validation=Validation(**v["validation"]) if v.get("validation") else None,
                        data_files=tuple(str(name) for name in v.get("data_files", ())),
                    )
                    for v in data["variants"]
                ),
                pooling=Pooling(data["pooling"]) if data.get("pooling") else None,
                normalize=bool(data.get("normalize", False)),
                dense=tuple(
                    DenseLayer(
                        file=d["file"],
                        in_features=int(d["in_features"]),
                        out_features=int(d["out_features"]),
                        activation=Activation(d.get("activation", "identity")),
                    )
                    for d in data.get("dense", [])
                ),
                prompts=dict(data.get("prompts", {})),
                default_prompt_name=data.get("default_prompt_name"),
                include_prompt=bool(data.get("include_prompt", True)),
                id2label={int(k): str(v) for k, v in data.get("id2label", {}).items()},
                pair_template=PairTemplate(**data["pair_template"])
                if data.get("pair_template")
                else None,
                token_heads=_token_heads(data["token_heads"]) if data.get("token_heads") else None,
                files={
                    str(name): FileDigest(sha256=str(d["sha256"]), size=int(d["size"]))
                    for name, d in data.get("files", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{MANIFEST_FILE}: malformed ({exc!r})") from exc


def _token_heads(data: dict[str, Any]) -> TokenHeads:
    return TokenHeads(
        sparse=data.get("sparse"),
        colbert=data.get("colbert"),
        unused_token_ids=tuple(int(i) for i in data.get("unused_token_ids", ())),
        vocab_size=int(data.get("vocab_size", 0)),
    )


def _plain(value: Any) -> Any:
    """Enums to their values, tuples to lists, int keys to strings: what json.dumps can write."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def is_package(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST_FILE
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PackageError(
            f"{manifest_path}: not found; is {path} a tei_ort model package?"
        ) from exc
    except json.JSONDecodeError as exc:
        raise PackageError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PackageError(f"{manifest_path}: expected a JSON object")
    return Manifest.from_dict(data)


def write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(path / MANIFEST_FILE)
