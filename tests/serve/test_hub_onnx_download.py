"""`--model-id org/name` naming a hub repo with an ONNX export: `tei-serve` (the real CLI, in its
own process) downloads it with huggingface_hub, at `--revision`, with `--hf-token`, and serves it. The hub is a local stand-in on a
loopback port (HF_ENDPOINT), speaking the part of the hub's HTTP API that snapshot_download uses
(repo info, then HEAD and GET per file), so the download runs for real without the network. The
repo holds a tiny random-weight BERT embedder's ONNX graph beside its Hugging Face files; the
served vectors are checked against sentence-transformers on the same files."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import VariantName
from tests.export import tiny_models
from tests.serve.live import tei_serve

pytest.importorskip("torch")

REPO_ID = "stand-in/tiny-onnx"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REVISION = "v1.0"  # a tag: --revision picks it, and only it is served
TOKEN = "hf_stand_in_token"  # --hf-token: every request must carry it
TEXTS = ["What is Deep Learning?", "x", "Paris is the capital of France. " * 10]


class Hub:
    """Files of one repo, served as the hub serves them; remembers which files were fetched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        self.fetched: list[str] = []
        self.authorizations: set[str | None] = set()
        self.lock = threading.Lock()

    def info(self) -> dict[str, object]:
        siblings = [{"rfilename": name} for name in self.files]
        return {"id": REPO_ID, "modelId": REPO_ID, "sha": COMMIT, "siblings": siblings}


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    info_path = f"/api/models/{REPO_ID}/revision/{REVISION}"
    file_prefix = f"/{REPO_ID}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _file(self) -> Path | None:
            if not self.path.startswith(file_prefix):
                return None
            revision, _, name = self.path.removeprefix(file_prefix).partition("/")
            if revision not in (COMMIT, REVISION) or name not in hub.files:
                return None
            return hub.root / name

        def _head(self, path: Path) -> None:
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def _authorized(self) -> bool:
            with hub.lock:
                hub.authorizations.add(self.headers.get("authorization"))
            if self.headers.get("authorization") == f"Bearer {TOKEN}":
                return True
            self.send_error(401)
            return False

        def do_HEAD(self) -> None:
            if not self._authorized():
                return
            path = self._file()
            if path is None:
                self.send_error(404)
                return
            self._head(path)

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path.split("?")[0] == info_path:
                body = json.dumps(hub.info()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            path = self._file()
            if path is None:
                self.send_error(404)
                return
            with hub.lock:
                hub.fetched.append(str(path.relative_to(hub.root)))
            self._head(path)
            self.wfile.write(path.read_bytes())

    return Handler


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedder's Hugging Face folder (safetensors weights, tokenizer, ST files)."""
    tokenizer = tmp_path_factory.mktemp("tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(tiny_models.MINILM / name, tokenizer / name)
    return tiny_models.build_model(
        "bert", "embedding", tokenizer, tmp_path_factory.mktemp("src") / "m"
    )


@pytest.fixture(scope="module")
def hub(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Hub]]:
    """The repo on the stand-in hub: the source's files plus onnx/model.onnx (the fp32 graph
    tei-export builds from them, as a user might upload an ONNX export)."""
    options = ExportOptions(
        variants=(VariantName.FP32,), validation_queries=4, validation_passages=8
    )
    package = export_model(str(source), tmp_path_factory.mktemp("pkg") / "p", options).path
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(source, repo, dirs_exist_ok=True)
    (repo / "onnx").mkdir()
    shutil.copyfile(package / "model.onnx", repo / "onnx" / "model.onnx")
    stand_in = Hub(repo)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stand_in
    finally:
        server.shutdown()
        thread.join(30)


def test_serves_a_hub_onnx_repo_downloaded_at_start(
    hub: tuple[str, Hub], source: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    endpoint, stand_in = hub
    cache = tmp_path / "hub-cache"
    env = {
        "MODEL_ID": REPO_ID,
        "REVISION": REVISION,
        "HF_TOKEN": TOKEN,
        "HF_ENDPOINT": endpoint,
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
    # --hf-token: every request carried it (the stand-in refuses any other with a 401).
    assert stand_in.authorizations == {f"Bearer {TOKEN}"}
    # Only what serving an ONNX repo needs came down: the JSON files and the graph, not the
    # PyTorch weights or the WordPiece vocabulary (tokenizer.json has it).
    assert "onnx/model.onnx" in stand_in.fetched
    assert {"model.safetensors", "vocab.txt"}.isdisjoint(stand_in.fetched)
    assert {f for f in stand_in.files if f.endswith(".json")} <= set(stand_in.fetched)
    # ... into the hub cache, where huggingface_hub keeps it.
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snapshot / "onnx" / "model.onnx").read_bytes() == (
        stand_in.root / "onnx" / "model.onnx"
    ).read_bytes()
