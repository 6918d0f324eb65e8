"""One-off measurement: export a random-weight Qwen3 embedder with Qwen3-Embedding-0.6B's real
config dims (hidden 1024, 28 layers, 16 heads, 8 KV heads, intermediate 3072, vocab 151,669:
596M parameters, a 2.4 GB float32 graph, so external data) and report each stage's time, the
package's files and each variant's validation. Run under /usr/bin/time -v for the peak RSS:

    PYTHONPATH=. /usr/bin/time -v .venv/bin/python scripts/big_decoder_export.py /tmp/big fp32,fp16

The tokenizer is the tests' 600-token BPE; the embedding table still has 151,669 rows (the ids
past 600 are never looked up, but the weights are exported, stored and loaded like the real
ones). Not part of the test suite: it takes tens of minutes and ~10 GB of memory."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import VariantName
from tests.export import tiny_decoders

QWEN3_EMBEDDING_0_6B = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151669,
    "tie_word_embeddings": True,
}


def build(out: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    tokenizer = tiny_decoders.build_tokenizer(out.with_name(out.name + "-tokenizer"))
    out.mkdir(parents=True)
    for file in tokenizer.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    fields = tiny_decoders.config("qwen3", 600) | QWEN3_EMBEDDING_0_6B
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(0)
    parsed = AutoConfig.for_model(**{k: v for k, v in fields.items() if k != "architectures"})
    model = AutoModel.from_config(parsed)  # transformers' init: std 0.02, norms 1
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors")
    )
    del model
    tiny_decoders.write_sentence_transformers(out, hidden=fields["hidden_size"], max_seq_length=512)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="work folder (source/ and package/ inside)")
    parser.add_argument("variants", help="comma-separated, e.g. fp32,fp16,int8-wo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    source = args.folder / "source"
    if not source.is_dir():
        build(source)
    variants = tuple(VariantName(v) for v in args.variants.split(","))
    options = ExportOptions(variants=variants, validation_queries=16, validation_passages=48)
    result = export_model(str(source), args.folder / "package", options)
    sizes = {p.name: p.stat().st_size for p in sorted(result.path.iterdir()) if p.is_file()}
    print(json.dumps({"seconds": result.seconds, "bytes": sizes}, indent=2))
    for variant in result.manifest.variants:
        print(variant.name.value, variant.data_files, variant.validation)


if __name__ == "__main__":
    main()
