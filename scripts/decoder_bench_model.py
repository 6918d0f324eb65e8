"""Build a random-weight Qwen3 embedder (Qwen3-Embedding's layout: last-token pooling, EOS
appended by the tokenizer, Normalize, prompts) at a chosen size, for timing decoders against
sentence-transformers when no real checkpoint can be downloaded:

    PYTHONPATH=. .venv/bin/python scripts/decoder_bench_model.py small /tmp/qwen3-small
    .venv/bin/python -m tei_ort.bench --source /tmp/qwen3-small --skip-server --raw cpu:fp32,cpu:int8

The tokenizer is the tests' byte-level BPE (600 tokens, Qwen2's pre-tokenizer) trained on the
offline corpus, so texts make more tokens than with Qwen's 151k vocabulary; speed depends on the
layer sizes and token counts, not on the weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tests.export import tiny_decoders

# "0.6b": Qwen3-Embedding-0.6B's layer sizes (the vocabulary stays the tests' 600 tokens).
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "intermediate_size": 1536,
    },
    "0.6b": tiny_decoders.QWEN3_EMBEDDING_0_6B_LAYERS,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    out: Path = args.out
    tokenizer = tiny_decoders.build_tokenizer(out.with_name(out.name + "-tokenizer"))
    out.mkdir(parents=True)
    for file in tokenizer.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    fields = tiny_decoders.config("qwen3", vocab) | SIZES[args.size]
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(0)
    parsed = AutoConfig.for_model(**{k: v for k, v in fields.items() if k != "architectures"})
    model = AutoModel.from_config(parsed)  # transformers' init: std 0.02, norms 1
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors")
    )
    tiny_decoders.write_sentence_transformers(out, hidden=fields["hidden_size"], max_seq_length=512)


if __name__ == "__main__":
    main()
