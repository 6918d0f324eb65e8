"""CPU time of a package's graphs side by side: raw ONNX Runtime sessions on one intra-op thread,
the same padded batches of corpus text, rounds interleaved, the fastest round of each counting.
CPU time (process_time) rather than wall time, so that other jobs on a shared machine change the
figures less; ratios to the first graph.

    .venv/bin/python scripts/graph_cpu_time.py PACKAGE model.onnx,model.int8.onnx,model.int8-u8.onnx \
        [--texts 96] [--batch 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from tei_ort.export import corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("graphs", help="comma-separated graph files of the package")
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    files = [f for f in args.graphs.split(",") if f]
    tokenizer = Tokenizer.from_file(str(args.package / "tokenizer.json"))
    tokenizer.enable_truncation(args.max_length)
    tokenizer.enable_padding()
    texts = corpus.mixed(args.texts, offset=0)
    batches = []
    for i in range(0, len(texts), args.batch):
        encoded = tokenizer.encode_batch(texts[i : i + args.batch])
        ids = np.array([e.ids for e in encoded], np.int64)
        mask = np.array([e.attention_mask for e in encoded], np.int64)
        batches.append(
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {
        f: ort.InferenceSession(str(args.package / f), options, providers=["CPUExecutionProvider"])
        for f in files
    }
    inputs = {f: {i.name for i in s.get_inputs()} for f, s in sessions.items()}
    best = dict.fromkeys(files, float("inf"))
    for _ in range(args.rounds):
        for f in files:
            started = time.process_time()
            for batch in batches:
                sessions[f].run(None, {k: v for k, v in batch.items() if k in inputs[f]})
            best[f] = min(best[f], time.process_time() - started)
    for f in files:
        print(f"{f}: {best[f]:.2f} s CPU, {best[files[0]] / best[f]:.2f}x {files[0]}")


if __name__ == "__main__":
    main()
