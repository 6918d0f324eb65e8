"""Dockerfile and Dockerfile-cuda, checked without a Docker engine.

1. Both files are parsed: the serving stage runs as a non-root user, listens on port 80, keeps
   models in the /data volume, checks /health, starts tei-serve, and installs no torch; the export
   stage bakes a package with tei-export.
2. The serving stage's marked install line (the same in both files) is replayed in a fresh virtual
   environment, the baked package is a package this session exported, and the server is started
   with the image's ENV, ENTRYPOINT and CMD: it must answer /embed with the runtime's vectors, pass
   the image's HEALTHCHECK command, have no torch, transformers or optimum, and exit 0 on SIGTERM.

Part 2 installs from the package index, so the default suite (`make test`), which runs offline,
skips it; `TEI_ORT_NETWORK_TESTS=1 .venv/bin/pytest tests/test_images.py` runs it.

Not verified here: the base images, apt, useradd, binding port 80 as that user, and the CUDA
execution provider (there is no GPU); the export stage's torch install from the CPU index."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import REPO

DOCKERFILES = ("Dockerfile", "Dockerfile-cuda")
# Absolute paths inside the image that the replay maps under a temporary root.
IMAGE_PATHS = ("/src", "/opt/tei", "/data")
MARKER = re.compile(r"^#\s*replayed:\s*(\w+)")
# Tests that reach the package index run only when asked: the default suite is offline.
NETWORK = "TEI_ORT_NETWORK_TESTS"
needs_network = pytest.mark.skipif(
    os.environ.get(NETWORK) != "1", reason=f"installs from the package index: set {NETWORK}=1"
)


@dataclass
class Instruction:
    keyword: str
    args: str
    marker: str | None = None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def marked(self, marker: str) -> Instruction:
        (found,) = [i for i in self.instructions if i.marker == marker]
        return found

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                pairs[key] = value
        return pairs


def parse(path: Path) -> dict[str, Stage]:
    """Instructions by stage; continuation lines joined; `# replayed: X` marks the next one."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    marker = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            found = MARKER.match(line)
            marker = found[1] if found else marker
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stage = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif stage is not None:
            stage.instructions.append(Instruction(keyword, args.strip(), marker))
        marker = None
    return stages


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_shape(name: str) -> None:
    stages = parse(REPO / name)
    export, serve = stages["export"], stages["serve"]
    runs = export.all("RUN")
    with_export = re.compile(r"\[[^\]]*\bexport\b[^\]]*\]")
    assert any(with_export.search(run) for run in runs) and any("tei-export" in run for run in runs)
    assert not any("torch" in run or with_export.search(run) for run in serve.all("RUN"))
    (user,) = serve.all("USER")
    assert user not in ("root", "0")
    env = serve.env()
    assert (env["PORT"], env["HOSTNAME"], env["HUGGINGFACE_HUB_CACHE"]) == (
        "80",
        "0.0.0.0",
        "/data",
    )
    assert serve.all("EXPOSE") == ["80"] and serve.all("VOLUME") == ["/data"]
    assert "/health" in serve.marked("healthcheck").args
    assert json.loads(serve.all("ENTRYPOINT")[0]) == ["tei-serve"]
    assert any(c.startswith("--from=export /package ") for c in serve.all("COPY"))
    if name == "Dockerfile-cuda":
        assert "cuda:13" in serve.base or "CUDA_IMAGE" in serve.base
        assert "cudnn" in (REPO / name).read_text()


def test_the_cpu_image_builds_every_variant_a_cpu_may_serve() -> None:
    """The export stage's default VARIANTS: each variant tei-export builds by default but fp16
    (CUDA's). An image built on an AVX2 runner without int8-w7 served fp32 there (int8 fails its
    bar on AVX2), and bf16 must be listed even where the builder cannot validate it."""
    from tei_ort.export.pipeline import DEFAULT_VARIANTS
    from tei_ort.package import VariantName

    args = dict(a.partition("=")[::2] for a in parse(REPO / "Dockerfile")["export"].all("ARG"))
    built = {VariantName(v) for v in args["VARIANTS"].split(",")}
    assert built == set(DEFAULT_VARIANTS) - {VariantName.FP16}
    assert {VariantName.INT8_W7, VariantName.BF16} <= built


def _map(command: str, root: Path) -> str:
    """Image paths -> the same paths under `root`."""
    pattern = "|".join(re.escape(p) for p in IMAGE_PATHS)
    return re.sub(rf"(?<![\w/.])({pattern})(?=[/\s\"':\[]|$)", lambda m: f"{root}{m[1]}", command)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@needs_network
def test_serving_image_replayed_outside_docker(tmp_path: Path, minilm_package: Path) -> None:
    from tei_ort.runtime import Model, RuntimeOptions

    stages = {name: parse(REPO / name)["serve"] for name in DOCKERFILES}
    install = {name: stage.marked("install").args for name, stage in stages.items()}
    assert len(set(install.values())) == 1, install  # one replay stands for both images
    serve = stages["Dockerfile"]
    root = tmp_path / "image"
    for args in serve.all("COPY"):  # the build context's files, where the image puts them
        if args.startswith("--from"):
            continue
        *sources, destination = shlex.split(args)
        for source in sources:
            target = Path(_map(destination, root))
            if destination.endswith("/"):
                target = target / Path(source).name
            target.parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (REPO / source).is_dir() else shutil.copy
            copy(REPO / source, target)
    # Let pip reuse its cache (the image passes --no-cache-dir to stay small), and build the
    # virtual environment from this interpreter's base Python: nothing of .venv comes along.
    command = _map(install["Dockerfile"], root).replace(" --no-cache-dir", "")
    command = re.sub(r"^python3 ", f"{shlex.quote(sys.executable)} ", command)
    started = time.monotonic()
    subprocess.run(["bash", "-c", command], check=True, capture_output=True, timeout=600)
    install_s = time.monotonic() - started
    venv = root / "opt" / "tei"
    (baked,) = [a for a in serve.all("COPY") if a.startswith("--from=export")]
    shutil.copytree(minilm_package, _map(baked.split()[-1], root))

    heavy = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers', 'optimum')))"  # fmt: skip
    assert subprocess.run([venv / "bin" / "python", "-c", heavy]).returncode == 0

    port, metrics_port = _free_port(), _free_port()
    env = {k: _map(v, root).replace("$PATH", os.environ["PATH"]) for k, v in serve.env().items()}
    # Loopback only, on free ports (the image's 80 and 9000 are not ours to take here).
    env |= {"PORT": str(port), "HOSTNAME": "127.0.0.1", "PROMETHEUS_PORT": str(metrics_port)}
    env |= {"HOME": str(tmp_path), "LANG": "C.UTF-8"}
    Path(env["HUGGINGFACE_HUB_CACHE"]).mkdir(parents=True, exist_ok=True)
    argv = json.loads(serve.all("ENTRYPOINT")[0]) + json.loads(serve.all("CMD")[0])
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "tei-serve did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        texts = ["What is Deep Learning?", "Paris is the capital of France."]
        got = httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=30).json()
        model = Model.load(minilm_package, RuntimeOptions(provider="cpu"))
        np.testing.assert_allclose(got, model.embed(texts, normalize=True), atol=1e-5)
        assert "te_request_count" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        healthcheck = json.loads(serve.marked("healthcheck").args.split("CMD", 1)[1])
        assert subprocess.run(healthcheck, env=env, timeout=30).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # --json-output
    assert any("Ready:" in line["message"] for line in lines)
    print(f"replayed install: {install_s:.0f} s")
