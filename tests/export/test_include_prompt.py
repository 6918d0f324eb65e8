"""The prompt's tokens left out of the pooling (sentence-transformers' Pooling include_prompt=false,
as NV-Embed-v2 and INSTRUCTOR-style models ship it): a tiny random BERT with its "query: " prompt,
per pooling mode, exported, served over HTTP with and without prompt_name, against
sentence-transformers' own encode of the same folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import VariantName, read_manifest
from tei_ort.serve.cli import build as build_app
from tei_ort.serve.settings import load_settings
from tests.export.conftest import TinySource
from tests.serve import live

FP32 = ExportOptions(variants=(VariantName.FP32,), validation_queries=8, validation_passages=24)
MODES = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "lasttoken": "pooling_mode_lasttoken",
}
TEXTS = [
    "cats sit on warm mats",
    "the weather in the mountains changes quickly in the afternoon, bring a coat",
    "hi",
]


@pytest.fixture(scope="module")
def source_for(
    tiny_source: TinySource, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The tiny BERT embedder (prompts query / passage) with `mode` pooling, include_prompt false."""
    root = tmp_path_factory.mktemp("include-prompt")

    def get(mode: str) -> Path:
        out = root / mode
        if not out.exists():
            shutil.copytree(tiny_source("bert", "embedding"), out)
            config_path = out / "1_Pooling" / "config.json"
            config = json.loads(config_path.read_text())
            config |= {flag: flag == MODES[mode] for flag in MODES.values()}
            config_path.write_text(json.dumps(config | {"include_prompt": False}))
        return out

    return get


def st_vectors(source: Path, prompt_name: str | None, include_prompt: bool = False) -> np.ndarray:
    model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    model[1].include_prompt = include_prompt
    vectors = model.encode(
        TEXTS, prompt_name=prompt_name, normalize_embeddings=True, batch_size=len(TEXTS)
    )
    return np.asarray(vectors)


@contextmanager
def serving(package: Path, hub_cache: Path, *extra: str) -> Iterator[httpx.Client]:
    args = ["--model-id", str(package), "--provider", "cpu", "--variant", "fp32", *extra]
    args += ["--prometheus-port", "0", "--huggingface-hub-cache", str(hub_cache)]
    with (
        live.serve_app(build_app(load_settings(args, {}))) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        yield client


def served(client: httpx.Client, prompt_name: str | None) -> np.ndarray:
    body: dict[str, object] = {"inputs": TEXTS, "normalize": True}
    if prompt_name is not None:
        body["prompt_name"] = prompt_name
    answer = client.post("/embed", json=body)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json(), dtype=np.float32)


@pytest.mark.parametrize("mode", MODES)
def test_served_without_the_prompt_equals_sentence_transformers(
    mode: str, source_for: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With prompt_name (and without), /embed == sentence-transformers' encode: mean over the
    tokens after [CLS] and the prompt, CLS the first token after them (sentence-transformers 5
    reads the first pooled position), last-token unchanged (its [SEP] is never the prompt's).
    Where leaving the prompt out changes the vector (mean, cls), the served one is also checked
    to differ from the prompt-included one, so that the test fails if the mask were ignored."""
    source = source_for(mode)
    package = export_model(str(source), tmp_path_factory.mktemp(f"package-{mode}"), FP32).path
    assert read_manifest(package).include_prompt is False
    with serving(package, tmp_path_factory.mktemp("hub")) as client:
        got = {name: served(client, name) for name in (None, "query")}
    for name, vectors in got.items():
        np.testing.assert_allclose(vectors, st_vectors(source, name), atol=2e-5, rtol=0)
    if mode != "lasttoken":
        with_prompt = st_vectors(source, "query", include_prompt=True)
        assert float(np.abs(got["query"] - with_prompt).max()) > 1e-2
    if mode == "mean":  # the default prompt (--default-prompt-name) is left out the same way
        hub = tmp_path_factory.mktemp("hub-default")
        with serving(package, hub, "--default-prompt-name", "query") as client:
            by_default = served(client, None)
        np.testing.assert_allclose(by_default, got["query"], atol=1e-6, rtol=0)
