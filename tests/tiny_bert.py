"""A tiny random-weight BERT sentence-transformers model (MiniLM's tokenizer, hidden 32, 2 layers)
and its fp32-only export options: the smallest real model the export pipeline runs end to end in
seconds, for the tests of what happens around an export (integrity, crash safety, the hub)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tei_ort.export.pipeline import ExportOptions
from tei_ort.package import VariantName
from tests.export import tiny_models

OPTIONS = ExportOptions(variants=(VariantName.FP32,), validation_queries=8, validation_passages=24)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def build(out: Path) -> Path:
    """The model folder at `out` (config.json, model.safetensors, tokenizer, modules.json, ...)."""
    tokenizer = out.parent / f"{out.name}-tokenizer"
    tokenizer.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tiny_models.MINILM / name, tokenizer / name)
    return tiny_models.build_model("bert", "embedding", tokenizer, out)
