"""tei-export and tei-serve against a hub on loopback (tests/hub/hub_server.py) selected with
HF_ENDPOINT in child processes, as users select a mirror: revisions by branch, tag, commit and
refs/pr/N; the token as the Authorization header and never in a log; private, gated and missing
repos, revisions and files as errors naming the repo; only the needed files fetched; an interrupted
download resumed; HF_HUB_OFFLINE=1 and a hub that is down served from the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import TinyBert
from tests.hub.hub_server import Hub, HubServer, Repo, commit_of
from tests.serve.live import free_port, tei_serve

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_t14SecretTokenNeverLogged"
CHUNK = 10 * 1024 * 1024  # huggingface_hub's DOWNLOAD_CHUNK_SIZE: what a partial file holds
# Files a model repo often carries that export never reads.
UNNEEDED = {
    "pytorch_model.bin": b"a second copy of the weights",
    "onnx/model.onnx": b"not for tei-export",
    "README.md": b"# tiny",
    "flax_model.msgpack": b"flax weights",
}
# The child: hub.locate (tei-export's download) for each call in a JSON list; one result each.
LOCATE = """
import json, sys
from pathlib import Path
from tei_ort.errors import TeiOrtError
from tei_ort.export import hub
results = []
for call in json.loads(sys.argv[1]):
    try:
        loc = hub.locate(call["repo"], revision=call.get("revision"), token=call.get("token"),
                         cache_dir=Path(call["cache"]))
        prompts = json.loads((loc.folder / "config_sentence_transformers.json").read_text())
        results.append({"revision": loc.revision, "folder": str(loc.folder),
                        "prompt": prompts["prompts"]["query"]})
    except TeiOrtError as exc:
        results.append({"error": str(exc)})
print(json.dumps(results))
"""


def _commit(base: Path, folder: Path, prompt: str) -> Path:
    """A copy of `base` whose query prompt is `prompt`, so each revision is recognisable."""
    shutil.copytree(base, folder)
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": prompt}, "default_prompt_name": None})
    )
    return folder


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_fp32: Callable[[str], TinyBert]
) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("hub")
    # The session's tiny BERT embedder and its fp32 package (tests/conftest.py); every repo is a
    # copy of the source folder.
    tiny = tiny_bert_fp32("embedding")
    source = tiny.source
    main = _commit(source, root / "main", "main: ")
    for name, data in UNNEEDED.items():
        (main / name).parent.mkdir(exist_ok=True)
        (main / name).write_bytes(data)
    dev = _commit(source, root / "dev", "dev: ")
    pr = _commit(source, root / "pr", "pr: ")
    commits = {commit_of(f): f for f in (main, dev, pr)}
    ids = {f: c for c, f in commits.items()}
    refs = {"main": ids[main], "v1.0": ids[main], "dev": ids[dev], "refs/pr/1": ids[pr]}
    onnx = _onnx_repo(source, tiny.package, root)
    big = _commit(source, root / "big", "big: ")
    plain = _commit(source, root / "plain", "plain: ")  # no ONNX export: tei-serve exports it
    (plain / "pytorch_model.bin").write_bytes(UNNEEDED["pytorch_model.bin"])
    (big / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(24_000_000))
    hub = Hub(
        repos={
            "org/tiny": Repo(commits, refs),
            "org/private": Repo(
                {ids[main]: main}, {"main": ids[main]}, private=True, tokens=frozenset({TOKEN})
            ),
            "org/gated": Repo(
                {ids[main]: main}, {"main": ids[main]}, gated=True, tokens=frozenset({TOKEN})
            ),
            "org/vanished": Repo(
                {ids[main]: main}, {"main": ids[main]}, vanished=frozenset({"model.safetensors"})
            ),
            "org/plain": Repo({commit_of(plain): plain}, {"main": commit_of(plain)}),
            "org/big": Repo({commit_of(big): big}, {"main": commit_of(big)}),
            "org/onnx": Repo(
                {commit_of(onnx): onnx},
                {"main": commit_of(onnx)},
                private=True,
                tokens=frozenset({TOKEN}),
            ),
        }
    )
    with HubServer(hub):
        yield hub


def _onnx_repo(source: Path, package: Path, root: Path) -> Path:
    """A repo as TEI's ONNX backend reads one: onnx/model.onnx (the graph tei-export built from
    `source`, its `package`) beside the model's JSON files (and weights the server must not
    fetch)."""
    repo = _commit(source, root / "onnx", "onnx: ")
    (repo / "onnx").mkdir()
    shutil.copyfile(package / "model.onnx", repo / "onnx" / "model.onnx")
    return repo


def _env(hub_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    # HF_HOME in the test's folder: no token saved on this machine is picked up.
    return {**env, "HF_ENDPOINT": hub_url, "HF_HOME": str(home), "PYTHONPATH": str(REPO), **extra}


def _locate(
    hub_url: str, home: Path, calls: list[dict[str, Any]], **env: str
) -> list[dict[str, str]]:
    run = subprocess.run(
        [sys.executable, "-c", LOCATE, json.dumps(calls)],
        env=_env(hub_url, home, **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert TOKEN not in run.stdout + run.stderr
    return list(json.loads(run.stdout.splitlines()[-1]))


def test_revisions_by_branch_tag_commit_and_pr(hub: Hub, tmp_path: Path) -> None:
    refs = hub.repos["org/tiny"].refs
    calls = [
        {"repo": "org/tiny", "revision": revision, "cache": str(tmp_path / "cache")}
        for revision in (None, "v1.0", refs["dev"], "dev", "refs/pr/1")
    ]
    got = [(r["revision"], r["prompt"]) for r in _locate(hub.url, tmp_path, calls)]
    assert got == [
        (refs["main"], "main: "),
        (refs["main"], "main: "),
        (refs["dev"], "dev: "),
        (refs["dev"], "dev: "),
        (refs["refs/pr/1"], "pr: "),
    ]


def test_only_the_needed_files_are_fetched(hub: Hub, tmp_path: Path) -> None:
    hub.log.clear()
    (result,) = _locate(hub.url, tmp_path, [{"repo": "org/tiny", "cache": str(tmp_path / "c")}])
    assert "error" not in result
    assert sorted(hub.downloads("org/tiny")) == [
        "1_Pooling/config.json",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_private_gated_and_missing_are_errors_naming_the_repo(hub: Hub, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    hub.log.clear()
    results = _locate(
        hub.url,
        tmp_path,
        [
            {"repo": "org/private", "cache": cache},
            {"repo": "org/gated", "cache": cache},
            {"repo": "org/gated", "cache": cache, "token": "hf_someoneElse"},
            {"repo": "org/missing", "cache": cache},
            {"repo": "org/tiny", "cache": cache, "revision": "no-such-branch"},
            {"repo": "org/vanished", "cache": cache},
            {"repo": "org/private", "cache": cache, "token": TOKEN},
        ],
    )
    errors = [r.get("error", "") for r in results]
    assert errors[0].startswith(f"org/private: no such repo on {hub.url}, or it is private")
    assert errors[1].startswith(f"org/gated: a gated repo on {hub.url}")
    assert errors[2].startswith(f"org/gated: a gated repo on {hub.url}")
    assert errors[3].startswith(f"org/missing: no such repo on {hub.url}")
    assert errors[4].startswith("org/tiny: revision 'no-such-branch' not found")
    assert errors[5].startswith("org/vanished: a file is missing at revision 'main'")
    assert results[6]["prompt"] == "main: "  # the token opens the private repo
    statuses = {
        (r.path.split("/")[4 if r.path.startswith("/api") else 2], r.status) for r in hub.log
    }
    assert {("private", 401), ("gated", 401), ("gated", 403), ("missing", 404)} <= statuses
    assert all(r.authorized for r in hub.log if "private" in r.path and r.status == 200)


def test_an_interrupted_download_is_resumed(hub: Hub, tmp_path: Path) -> None:
    """huggingface_hub writes 10 MiB chunks and resumes from the partial file on the next call:
    org/big's 24 MB weights are cut off after 15 MB, so one chunk is on disk."""
    big = hub.repos["org/big"].commits[hub.repos["org/big"].refs["main"]]
    hub.cut_after["model.safetensors"] = 15_000_000
    hub.log.clear()
    call = {"repo": "org/big", "cache": str(tmp_path / "cache")}
    first, second = _locate(hub.url, tmp_path, [call, call])
    assert first["error"].startswith("org/big: ")  # the connection dropped mid-file
    weights = [r for r in hub.log if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert [r.range for r in weights] == [None, f"bytes={CHUNK}-"]  # the second call resumed
    assert [r.status for r in weights] == [200, 206]
    got = (Path(second["folder"]) / "model.safetensors").read_bytes()
    assert got == (big / "model.safetensors").read_bytes()


def test_offline_and_a_hub_that_is_down_use_the_cache(hub: Hub, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    (online,) = _locate(
        hub.url, tmp_path, [{"repo": "org/tiny", "cache": cache, "revision": "dev"}]
    )
    hub.log.clear()
    call = {"repo": "org/tiny", "cache": cache, "revision": "dev"}
    (offline,) = _locate(hub.url, tmp_path, [call], HF_HUB_OFFLINE="1")
    down_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (down,) = _locate(down_url, tmp_path, [call])
    assert offline == online and down == online
    assert hub.log == []  # offline: not one request
    empty = {"repo": "org/tiny", "cache": str(tmp_path / "empty")}
    (no_copy,) = _locate(down_url, tmp_path, [empty])
    assert no_copy["error"].startswith(
        f"org/tiny: the hub at {down_url} cannot be reached and the cache has no copy"
    )
    (no_copy,) = _locate(hub.url, tmp_path, [empty], HF_HUB_OFFLINE="1")
    assert "cannot be reached (HF_HUB_OFFLINE is set)" in no_copy["error"]


def test_tei_export_with_a_token_never_logs_it(hub: Hub, tmp_path: Path) -> None:
    hub.log.clear()
    out = tmp_path / "pkg"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tei_ort.export.cli",
            "org/private",
            "-o",
            str(out),
            "--variants",
            "fp32",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--log-level",
            "DEBUG",
        ],
        env=_env(hub.url, tmp_path, HF_TOKEN=TOKEN),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert TOKEN not in run.stdout + run.stderr
    assert hub.log and all(r.authorized for r in hub.log)  # HF_TOKEN sent as Authorization
    manifest = json.loads((out / "manifest.json").read_text())
    main = hub.repos["org/private"].refs["main"]
    assert (manifest["source"]["model_id"], manifest["source"]["revision"]) == ("org/private", main)
    assert manifest["prompts"] == {"query": "main: "}


def test_tei_serve_an_onnx_repo_from_the_hub(hub: Hub, tmp_path: Path) -> None:
    hub.log.clear()
    env = _env(
        hub.url,
        tmp_path,
        MODEL_ID="org/onnx",
        HF_TOKEN=TOKEN,
        HUGGINGFACE_HUB_CACHE=str(tmp_path / "cache"),
        LOG_LEVEL="debug",
    )
    with tei_serve(env, module="tei_ort.serve.cli", timeout_s=300) as (url, output):
        got = httpx.post(f"{url}/embed", json={"inputs": ["a query", "another"]})
        info = httpx.get(f"{url}/info").json()
    assert got.status_code == 200
    vectors = np.asarray(got.json())
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert info["model_id"] == "org/onnx"
    assert TOKEN not in "\n".join(output)
    fetched = sorted(hub.downloads("org/onnx"))
    assert "onnx/model.onnx" in fetched and "model.safetensors" not in fetched
    assert all(name.endswith(".json") or name == "onnx/model.onnx" for name in fetched)
    # Restarted with HF_HUB_OFFLINE=1, then against a hub that is down: served from the cache,
    # the same vectors, not one request to the hub.
    hub.log.clear()
    down = f"http://127.0.0.1:{free_port()}"
    for restart in ({**env, "HF_HUB_OFFLINE": "1"}, {**env, "HF_ENDPOINT": down}):
        with tei_serve(restart, module="tei_ort.serve.cli", timeout_s=300) as (url, _):
            again = httpx.post(f"{url}/embed", json={"inputs": ["a query", "another"]})
        np.testing.assert_allclose(np.asarray(again.json()), vectors, atol=1e-6)
    assert hub.log == []


def test_tei_serve_exports_a_plain_hub_model_on_the_fly(hub: Hub, tmp_path: Path) -> None:
    hub.log.clear()
    env = _env(
        hub.url,
        tmp_path,
        MODEL_ID="org/plain",
        VARIANT="fp32",
        HUGGINGFACE_HUB_CACHE=str(tmp_path / "cache"),
    )
    with tei_serve(env, module="tei_ort.serve.cli", timeout_s=600) as (url, _):
        got = httpx.post(f"{url}/embed", json={"inputs": "a query", "prompt_name": "query"})
        info = httpx.get(f"{url}/info").json()
    assert got.status_code == 200 and np.asarray(got.json()).shape == (1, 32)
    assert info["model_id"] == "org/plain"
    fetched = set(hub.downloads("org/plain"))
    assert "model.safetensors" in fetched and "pytorch_model.bin" not in fetched
