"""A tiny random-weight BGE-M3 in BAAI/bge-m3's layout: an XLM-RoBERTa encoder (8,194 positions,
max_seq_length 8,192) with CLS pooling and Normalize, and FlagEmbedding's two extra heads beside
modules.json as torch state_dicts: sparse_linear.pt (Linear(hidden, 1)) and colbert_linear.pt
(Linear(hidden, hidden))."""

from __future__ import annotations

import shutil
from pathlib import Path

from tei_ort.export.st_files import write_pooling_normalize

HIDDEN = 32
MAX_LENGTH = 8192


def build(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    config = XLMRobertaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH + 2,
        type_vocab_size=1,
        pad_token_id=tokenizer.token_to_id("<pad>"),
        bos_token_id=0,
        eos_token_id=2,
        architectures=["XLMRobertaModel"],
    )
    torch.manual_seed(seed)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(str(out))
    for file in tokenizer_dir.iterdir():
        shutil.copyfile(file, out / file.name)
    write_pooling_normalize(out, HIDDEN, "cls_token", MAX_LENGTH)
    generator = torch.Generator().manual_seed(seed + 1)
    for name, width in (("sparse_linear.pt", 1), ("colbert_linear.pt", HIDDEN)):
        linear = torch.nn.Linear(HIDDEN, width)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(width, HIDDEN, generator=generator) * 0.3)
            linear.bias.copy_(torch.randn(width, generator=generator) * 0.1)
        torch.save(linear.state_dict(), out / name)
    return out
