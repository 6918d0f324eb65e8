"""Tokens/s of the raw runtime at several padded-token budgets per forward batch, on the same
length-sorted corpus, in one run. It chose the CPU's target_batch_tokens in
tei_ort/runtime/providers.py.

    .venv/bin/python scripts/batch_tokens_study.py PACKAGE [--variants cpu:fp32,cpu:int8,openvino:bf16]
        [--budgets 256,512,1024,2048,4096]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.trial import budget_batches

BUDGETS = "256,512,1024,2048,4096,16384"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    parser.add_argument("--variants", default="cpu:fp32,cpu:int8", help="provider:variant pairs")
    parser.add_argument("--budgets", default=BUDGETS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    texts = corpus.mixed(512)
    print(f"cpu: {this_cpu().describe()}")
    budgets = [int(b) for b in args.budgets.split(",")]
    for pair in args.variants.split(","):
        provider, variant = pair.split(":")
        options = RuntimeOptions(provider=provider, variant=variant, intra_op_threads=args.threads)
        model = Model.load(args.package, options)
        encodings = model.encode(texts)
        lengths = [len(e) for e in encodings]
        rates = {}
        for budget in budgets:
            plan = budget_batches(encodings, budget)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for batch in plan:
                    model.forward([encodings[i] for i in batch])
                best = min(best, time.perf_counter() - start)
            rates[budget] = sum(lengths) / best
        print(pair, "  ".join(f"{b}: {r:,.0f} tok/s" for b, r in rates.items()))


if __name__ == "__main__":
    main()
