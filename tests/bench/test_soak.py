"""The soak's load profiles and its verdict (the run itself is `make soak`, minutes long)."""

from __future__ import annotations

import argparse
import random
from collections import Counter

from tei_ort.bench import soak


def test_hostile_profile_sends_what_issue_14_names() -> None:
    rng = random.Random(0)
    seen: dict[str, int] = Counter()
    for model_type in ("embedding", "reranker") * 3:
        path, body = soak._hostile(rng, argparse.Namespace(batch=8, model_type=model_type))
        assert path == {"embedding": "/embed", "reranker": "/rerank"}[model_type]
        seen[path] += 1
        assert body["truncate"] is True
        if path == "/embed":
            inputs = body["inputs"]
            assert isinstance(inputs, list) and len(inputs) == 1_000
            assert {len(text) for text in inputs} == {8_000}
        else:
            assert path == "/rerank"
            texts = body["texts"]
            assert isinstance(texts, list) and 200 <= len(texts) <= 400
            assert all(2_000 <= len(text) <= 8_000 for text in texts)
            assert isinstance(body["query"], str) and len(body["query"]) == 200
    assert set(seen) == {"/embed", "/rerank"}


def test_mixed_profile_sends_batches_of_the_asked_size() -> None:
    path, body = soak._mixed(random.Random(0), argparse.Namespace(batch=5))
    assert path == "/embed" and len(body["inputs"]) == 5  # type: ignore[arg-type]


def test_verdict() -> None:
    ok = Counter({200: 10})
    assert soak.passed("mixed", ok, 0.05, 0)
    assert not soak.passed("mixed", ok, 0.10, 0)  # growth at the bar fails
    assert not soak.passed("mixed", ok, 0.0, 1)  # no clean drain
    assert not soak.passed("mixed", Counter({200: 10, 429: 1}), 0.0, 0)
    assert soak.passed("hostile", Counter({200: 10, 429: 3}), 0.0, 0)
    assert not soak.passed("hostile", Counter({429: 3}), 0.0, 0)  # nothing answered
    assert not soak.passed("hostile", Counter({200: 10, 500: 1}), 0.0, 0)
