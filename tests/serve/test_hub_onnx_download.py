"""`--model-id org/name` naming a hub repo with an ONNX export: `tei-serve` (the real CLI, in its
own process) downloads it with huggingface_hub, at `--revision`, with `--hf-token`, and serves it.
The hub is tests/hub/hub_server.py on a loopback port (HF_ENDPOINT), so the download runs for real
without the network. The repo holds a tiny random-weight BERT embedder's ONNX graph beside its
Hugging Face files; the served vectors are checked against sentence-transformers on the same
files (tests/hub/test_hub.py serves an ONNX repo too, and checks the download, not the values)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import TinyBert
from tests.hub.hub_server import Hub, HubServer, Repo, commit_of
from tests.serve.live import tei_serve

pytest.importorskip("torch")

REPO_ID = "stand-in/tiny-onnx"
REVISION = "v1.0"  # a tag: --revision picks it, and only it is served
TOKEN = "hf_stand_in_token"  # --hf-token: every request must carry it
TEXTS = ["What is Deep Learning?", "x", "Paris is the capital of France. " * 10]


@pytest.fixture(scope="module")
def tiny(tiny_bert_fp32: Callable[[str], TinyBert]) -> TinyBert:
    """The tiny embedder's Hugging Face folder (safetensors weights, tokenizer, ST files) and the
    fp32 package tei-export built from it (the session's, tests/conftest.py)."""
    return tiny_bert_fp32("embedding")


@pytest.fixture(scope="module")
def source(tiny: TinyBert) -> Path:
    return tiny.source


@pytest.fixture(scope="module")
def hub(tiny: TinyBert, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A private repo on the stand-in hub whose only ref is the tag REVISION: the source's files
    plus onnx/model.onnx (the fp32 graph tei-export builds from them, as a user might upload an
    ONNX export). Without the token it is a 401, without the tag a RevisionNotFound."""
    source, package = tiny.source, tiny.package
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(source, repo, dirs_exist_ok=True)
    (repo / "onnx").mkdir()
    shutil.copyfile(package / "model.onnx", repo / "onnx" / "model.onnx")
    commit = commit_of(repo)
    stand_in = Hub(
        repos={
            REPO_ID: Repo(
                commits={commit: repo},
                refs={REVISION: commit},
                private=True,
                tokens=frozenset({TOKEN}),
            )
        }
    )
    with HubServer(stand_in):
        yield stand_in


def test_serves_a_hub_onnx_repo_downloaded_at_start(hub: Hub, source: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    cache = tmp_path / "hub-cache"
    env = {
        "MODEL_ID": REPO_ID,
        "REVISION": REVISION,
        "HF_TOKEN": TOKEN,
        "HF_ENDPOINT": hub.url,
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": None,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "PROVIDER": "cpu",
        "HOSTNAME": "127.0.0.1",
    }
    with tei_serve(env, timeout_s=180) as (url, _):
        got = httpx.post(f"{url}/embed", json={"inputs": TEXTS}, timeout=60)
        info = httpx.get(f"{url}/info", timeout=60).json()
    want = SentenceTransformer(str(source), device="cpu", local_files_only=True).encode(
        TEXTS, normalize_embeddings=True
    )
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(got.json(), want, atol=1e-4)
    assert (info["model_id"], info["model_sha"]) == (REPO_ID, REVISION)
    # --hf-token and --revision: every request carried a token (the repo is private), and the
    # repo was asked for at the tag, its only ref.
    assert hub.log and all(r.authorized and r.status in (200, 206) for r in hub.log), hub.log
    assert f"/api/models/{REPO_ID}/revision/{REVISION}" in [r.path for r in hub.log]
    # Only what serving an ONNX repo needs came down: the JSON files and the graph, not the
    # PyTorch weights or the WordPiece vocabulary (tokenizer.json has it).
    (commit, folder), *_ = hub.repos[REPO_ID].commits.items()
    files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    fetched = set(hub.downloads(REPO_ID))
    assert "onnx/model.onnx" in fetched
    assert {"model.safetensors", "vocab.txt"}.isdisjoint(fetched)
    assert {f for f in files if f.endswith(".json")} <= fetched
    # ... into the hub cache, where huggingface_hub keeps it.
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    graph = (snapshot / "onnx" / "model.onnx").read_bytes()
    assert graph == (folder / "onnx" / "model.onnx").read_bytes()
