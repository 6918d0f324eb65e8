"""Tokens/s of the raw runtime at several padded-token budgets per forward batch, on the same
length-sorted corpus, in one run. It chose the CPU's target_batch_tokens in
tei_ort/runtime/providers.py.

    .venv/bin/python scripts/batch_tokens_study.py PACKAGE [--variants fp32,int8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tei_ort.bench.engines import budget_batches
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions

BUDGETS = (1024, 2048, 4096, 8192, 16384)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    parser.add_argument("--variants", default="fp32,int8")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    texts = corpus.mixed(512)
    for variant in args.variants.split(","):
        options = RuntimeOptions(provider="cpu", variant=variant, intra_op_threads=args.threads)
        model = Model.load(args.package, options)
        encodings = model.encode(texts)
        lengths = [len(e) for e in encodings]
        rates = {}
        for budget in BUDGETS:
            plan = budget_batches(encodings, budget)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for batch in plan:
                    model.forward([encodings[i] for i in batch])
                best = min(best, time.perf_counter() - start)
            rates[budget] = sum(lengths) / best
        print(variant, "  ".join(f"{b}: {r:,.0f} tok/s" for b, r in rates.items()))


if __name__ == "__main__":
    main()
