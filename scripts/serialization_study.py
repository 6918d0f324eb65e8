"""What a response body costs to write (server) and to read (client), per format, for the shapes
the routes return: n embeddings of `dims` float32. Our paths: orjson with numpy arrays written in
C (TEI routes, OpenAI float) and base64 of little-endian float32 per vector (OpenAI base64);
against stdlib json over .tolist(), what a plain Python server does.

    .venv/bin/python scripts/serialization_study.py [--dims 384]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import timeit
from collections.abc import Callable

import numpy as np
import orjson


def best_us(fn: Callable[[], object], seconds: float = 0.3) -> float:
    number = max(1, int(seconds / max(timeit.timeit(fn, number=1), 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def formats(x: np.ndarray) -> dict[str, tuple[Callable[[], bytes], Callable[[bytes], object]]]:
    return {
        "orjson, numpy in C (ours)": (
            lambda: orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY),
            orjson.loads,
        ),
        "orjson over tolist()": (lambda: orjson.dumps(x.tolist()), orjson.loads),
        "stdlib json over tolist()": (lambda: json.dumps(x.tolist()).encode(), json.loads),
        "base64 float32 per vector (ours)": (
            lambda: orjson.dumps(
                [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in x]
            ),
            lambda body: [
                np.frombuffer(base64.b64decode(s), dtype="<f4") for s in orjson.loads(body)
            ],
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dims", type=int, default=384)
    args = p.parse_args()
    print(f"{'n':>5} {'format':34} {'write us':>10} {'read us':>10} {'bytes':>10}")
    for n in (1, 32, 1000):
        x = np.random.default_rng(0).standard_normal((n, args.dims)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for name, (write, read) in formats(x).items():
            body = write()
            read_us = best_us(functools.partial(read, body))
            print(f"{n:5d} {name:34} {best_us(write):10.1f} {read_us:10.1f} {len(body):10d}")


if __name__ == "__main__":
    main()
