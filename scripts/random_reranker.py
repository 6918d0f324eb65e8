"""Build a random-weight cross-encoder with all-MiniLM-L6-v2's sizes and tokenizer (a
BertForSequenceClassification with one label), for load and memory runs of /rerank when no real
re-ranker can be downloaded:

    .venv/bin/python scripts/random_reranker.py /tmp/minilm-reranker
    scripts/soak --profile hostile --model-id /tmp/minilm-reranker

The scores mean nothing; the graph's size, the token counts and the work per request are a real
MiniLM-L6 cross-encoder's (cross-encoder/ms-marco-MiniLM-L-6-v2 has these sizes)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from tei_ort.export.offline_models import folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    source = Path(folder("all-minilm-l6-v2"))
    config = BertConfig.from_pretrained(source)
    config.num_labels = 1
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(args.out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, args.out / name)
    AutoTokenizer.from_pretrained(args.out)  # the folder loads as transformers would load it
    print(f"random MiniLM-sized re-ranker in {args.out}")


if __name__ == "__main__":
    main()
