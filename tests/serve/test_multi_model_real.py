"""Three real tiny graphs in one `tei-serve` (an embedder, a re-ranker and a SPLADE model, each a
random-weight BERT exported by tei-export), built by `cli.build` from repeated --model-id flags
and driven over a real socket under mixed concurrent load. Each answer must equal what that
model's package computes alone (tei_ort.runtime.Model on the same package), whatever the other
models were doing; memory is reported per model in /info and /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.serve.cli import build
from tei_ort.serve.settings import load_settings
from tests.conftest import TinyBert
from tests.serve import live
from tests.serve.scrape import scrape, value

pytest.importorskip("torch")

TEXTS = ["What is Deep Learning?", "x", "Paris is the capital of France.", "dogs bark " * 20]
QUERY = "capital of france?"
HEADS = {"emb": "embedding", "rr": "reranker", "sp": "masked_lm"}
ROUNDS = 8  # requests per model in the mixed load
ATOL = 1e-5  # one fp32 graph, batched with other inputs or alone


@dataclass(frozen=True)
class Served:
    client: httpx.Client
    packages: dict[str, Path]  # served name -> package folder


@pytest.fixture(scope="module")
def served(
    tiny_bert_fp32: Callable[[str], TinyBert], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    # The session's tiny BERT packages (tests/conftest.py), shared with test_real_routes.py.
    packages = {name: tiny_bert_fp32(head).package for name, head in HEADS.items()}
    args: list[str] = []
    for name, package in packages.items():
        args += ["--model-id", str(package), "--served-model-name", name]
    args += ["--provider", "cpu", "--variant", "fp32", "--prometheus-port", "0"]
    args += ["--huggingface-hub-cache", str(tmp_path_factory.mktemp("hub"))]
    with (
        live.serve_app(build(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        yield Served(client, packages)


def _alone(package: Path) -> Model:
    return Model.load(package, RuntimeOptions(provider="cpu", variant="fp32"))


def _request(client: httpx.Client, name: str, texts: list[str]) -> object:
    """One request to `name` on its own route; the answer as a comparable array."""
    if name == "emb":
        r = client.post("/v1/embeddings", json={"input": texts, "model": name})
        assert r.status_code == 200, r.text
        return np.array([d["embedding"] for d in r.json()["data"]])  # (n, dims)
    if name == "rr":
        r = client.post("/rerank", json={"query": QUERY, "texts": texts, "model": name})
        assert r.status_code == 200, r.text
        return np.array([item["score"] for item in sorted(r.json(), key=lambda i: i["index"])])
    r = client.post("/embed_sparse", json={"inputs": texts, "model": name})
    assert r.status_code == 200, r.text
    return [{e["index"]: e["value"] for e in row} for row in r.json()]


def _expected(packages: dict[str, Path], name: str, texts: list[str]) -> object:
    model = _alone(packages[name])
    if name == "emb":
        return model.embed(texts, normalize=True)
    if name == "rr":
        return model.rerank(QUERY, texts)
    weights = model.embed_sparse(texts)  # (n, vocab)
    return [{int(i): float(row[i]) for i in np.flatnonzero(row)} for row in weights]


def _assert_same(name: str, got: object, want: object) -> None:
    if name == "sp":
        assert isinstance(got, list) and isinstance(want, list)
        for got_row, want_row in zip(got, want, strict=True):
            assert got_row.keys() == want_row.keys()
            np.testing.assert_allclose(
                [got_row[k] for k in want_row], list(want_row.values()), atol=ATOL
            )
    else:
        np.testing.assert_allclose(got, want, atol=ATOL)  # type: ignore[arg-type]


def test_three_models_answer_as_alone_under_mixed_load(served: Served) -> None:
    c = served.client
    before = scrape(c)
    # Every model at once, in one pool: requests of the three interleave in the server.
    jobs = [(name, TEXTS[i % len(TEXTS) :] + TEXTS[:1]) for i in range(ROUNDS) for name in HEADS]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda job: _request(c, *job), jobs))
    for (name, texts), got in zip(jobs, answers, strict=True):
        _assert_same(name, got, _expected(served.packages, name, texts))
    after = scrape(c)
    for name in HEADS:
        sent = value(after, "te_request_count", model=name, method="batch")
        assert sent - value(before, "te_request_count", model=name, method="batch") == ROUNDS
        assert value(after, "te_request_success", model=name, method="batch") >= ROUNDS


def test_memory_is_reported_per_model(served: Served) -> None:
    info = served.client.get("/info").json()
    metrics = scrape(served.client)
    by_name = {m["served_model_name"]: m for m in info["models"]}
    assert list(by_name) == list(HEADS)
    for name, package in served.packages.items():
        memory = by_name[name]["memory"]
        # The fp32 graph the model serves, byte for byte on disk.
        assert memory["graph_bytes"] == (package / _alone(package).variant.file).stat().st_size
        # Growth while loading and while warming up, never negative: a tiny graph can load into
        # pages an earlier model's trials freed (tests/serve/test_memory.py has the arithmetic).
        assert memory["load_rss_delta_bytes"] >= 0 and memory["warm_up_rss_delta_bytes"] >= 0
        assert memory["rss_delta_bytes"] == (
            memory["load_rss_delta_bytes"] + memory["warm_up_rss_delta_bytes"]
        )
        assert value(metrics, "te_model_graph_bytes", model=name) == memory["graph_bytes"]
        assert value(metrics, "te_model_memory_bytes", model=name) == memory["rss_delta_bytes"]
    assert info["memory"] == by_name["emb"]["memory"]  # TEI's fields: the first model
    assert info["resident_memory_bytes"] > max(m["memory"]["graph_bytes"] for m in info["models"])
    assert value(metrics, "process_resident_memory_bytes") > 0
