"""A source model read into one frozen description: what the config, tokenizer and
sentence-transformers files say, which weights exist, and the sha256 of every file read."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from tei_ort import st_config
from tei_ort.errors import PackageError, UnsupportedModel
from tei_ort.export import recipes
from tei_ort.export.hub import WEIGHT_LAYOUTS, Location
from tei_ort.st_config import SentenceTransformersConfig, read_json

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# BGE-M3's sparse and ColBERT heads as FlagEmbedding saves them, beside modules.json
# (torch pickles: checked by checkpoints.check like every weight file read).
TOKEN_HEAD_FILES = ("sparse_linear.pt", "colbert_linear.pt")
# transformers writes model_max_length = int(1e30) when a tokenizer has no limit.
_SANE_MAX_LENGTH = 1_000_000


@dataclass(frozen=True)
class SourceModel:
    location: Location
    root: Path  # the source folder (sentence-transformers root, or the HF folder)
    model_dir: Path  # the HF transformer folder: root, or root / "0_Transformer"
    architecture: str  # config.json architectures[0]
    model_type: str
    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    max_position_embeddings: int
    pad_token_id: int
    id2label: dict[int, str]
    tokenizer_max_length: int | None  # tokenizer_config.json model_max_length, when sane
    st: SentenceTransformersConfig | None
    weights: tuple[str, ...]  # relative to root
    files: dict[str, str]  # relative path -> sha256 of every file read

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def tokenizer_file(self) -> Path:
        return self.model_dir / TOKENIZER_FILE

    def max_input_length(self) -> int:
        """sentence-transformers' max_seq_length when set (MiniLM: 256, not the 512 positions),
        else the smaller of a sane tokenizer limit and the positions the model really has."""
        offset = recipes.lookup(self.architecture).family.position_offset
        positions = self.max_position_embeddings - offset
        if self.st is not None and self.st.max_seq_length is not None:
            if self.st.max_seq_length > positions:
                logger.warning(
                    "max_seq_length %d exceeds the model's %d positions; using %d",
                    self.st.max_seq_length,
                    positions,
                    positions,
                )
            return min(self.st.max_seq_length, positions)
        if self.tokenizer_max_length is not None:
            return min(self.tokenizer_max_length, positions)
        return positions


def read_source(location: Location) -> SourceModel:
    root = location.folder
    st = st_config.read(root)
    for dense in st.dense if st is not None else ():
        if dense.weights is None:
            raise PackageError(
                f"{dense.folder}: no Dense weights "
                f"(expected {' or '.join(st_config.DENSE_WEIGHT_FILES)})"
            )
    prefix = f"{st.transformer_path}/" if st is not None and st.transformer_path else ""
    model_dir = root / prefix if prefix else root
    config = read_json(root, prefix + CONFIG_FILE)
    architecture, model_type = _architecture(config, prefix + CONFIG_FILE)
    # Composite configs (NV-Embed-v2: its Mistral body's sizes under text_config): what the top
    # level does not say is read from text_config.
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        config = text_config | config
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise PackageError(
            f"{prefix}{TOKENIZER_FILE}: not found in {root}; tei_ort needs the fast (Rust) tokenizer file"
        )
    tokenizer_config = (
        read_json(root, prefix + TOKENIZER_CONFIG_FILE)
        if (model_dir / TOKENIZER_CONFIG_FILE).is_file()
        else {}
    )
    weights = _weights(root, prefix)
    read = [prefix + CONFIG_FILE, prefix + TOKENIZER_FILE, *weights]
    read += [
        prefix + f
        for f in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)
        if (model_dir / f).is_file()
    ]
    read += list(st.read_files) if st is not None else []
    read += [name for name in TOKEN_HEAD_FILES if (root / name).is_file()]
    return SourceModel(
        location=location,
        root=root,
        model_dir=model_dir,
        architecture=architecture,
        model_type=model_type,
        # DistilBERT names them dim / n_heads, NomicBERT (GPT-2 style) n_embd / n_head /
        # n_positions (8,192 in nomic-embed-text; rotary, so no embedding table bounds it).
        hidden_size=_int(config, ("hidden_size", "dim", "n_embd"), prefix + CONFIG_FILE),
        num_attention_heads=_int(
            config, ("num_attention_heads", "n_heads", "n_head"), prefix + CONFIG_FILE
        ),
        vocab_size=_int(config, ("vocab_size",), prefix + CONFIG_FILE),
        max_position_embeddings=_int(config, _position_keys(config), prefix + CONFIG_FILE),
        pad_token_id=_pad_token_id(config, root / prefix),
        id2label=_id2label(config, prefix + CONFIG_FILE),
        tokenizer_max_length=_tokenizer_max_length(tokenizer_config),
        st=st,
        weights=weights,
        files={name: sha256(root / name) for name in sorted(set(read))},
    )


def _architecture(config: dict[str, object], relative: str) -> tuple[str, str]:
    architectures = config.get("architectures")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise PackageError(f"{relative}: model_type missing")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        recipes.lookup(architectures[0])
        return architectures[0], model_type
    # Some sentence-transformers repos omit `architectures`: the bare encoder of the model type.
    family = recipes.FAMILIES_BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise UnsupportedModel(
            f"{relative}: model_type {model_type!r} without architectures is not supported; "
            f"supported: {recipes.supported()}"
        )
    return family.class_prefix + recipes.BASE.class_suffix, model_type


def _position_keys(config: dict[str, object]) -> tuple[str, ...]:
    """Where the positions a model takes are written. NomicBERT: n_positions, but with
    rotary_scaling_factor its rotary frequencies change with the padded length past
    max_trained_positions (dynamic NTK, so a text's vector would depend on its batch):
    inputs stop there, where the scaling never applies (vLLM's default too)."""
    if config.get("rotary_scaling_factor") and "max_trained_positions" in config:
        return ("max_trained_positions",)
    return ("max_position_embeddings", "n_positions")


def _int(config: dict[str, object], keys: tuple[str, ...], relative: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise PackageError(f"{relative}: {keys[0]} missing or not an integer")


def _pad_token_id(config: dict[str, object], model_dir: Path) -> int:
    value = config.get("pad_token_id")
    if isinstance(value, int):
        return value
    # No pad id in the config: ask the tokenizer for its pad token (BERT's [PAD] is 0).
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def _id2label(config: dict[str, object], relative: str) -> dict[int, str]:
    raw = config.get("id2label") or {}
    if not isinstance(raw, dict):
        raise PackageError(f"{relative}: id2label must be an object")
    try:
        return {int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}
    except ValueError as exc:
        raise PackageError(f"{relative}: id2label keys must be integers") from exc


def _tokenizer_max_length(tokenizer_config: dict[str, object]) -> int | None:
    value = tokenizer_config.get("model_max_length")
    if isinstance(value, int | float) and 0 < value < _SANE_MAX_LENGTH:
        return int(value)
    return None


def _weights(root: Path, prefix: str) -> tuple[str, ...]:
    for marker, _patterns in WEIGHT_LAYOUTS:
        if (root / prefix / marker).is_file():
            if not marker.endswith(".index.json"):
                return (prefix + marker,)
            index = read_json(root, prefix + marker)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise PackageError(f"{prefix}{marker}: weight_map missing")
            shards = sorted({str(s) for s in weight_map.values()})
            for shard in shards:
                if not (root / prefix / shard).is_file():
                    raise PackageError(f"{prefix}{shard}: not found (listed in {marker})")
            return (prefix + marker, *(prefix + s for s in shards))
    expected = ", ".join(marker for marker, _ in WEIGHT_LAYOUTS)
    raise PackageError(f"no model weights in {root / prefix} (expected one of {expected})")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
