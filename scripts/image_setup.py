"""What scripts/image_check.py needs before it can check anything: a Docker daemon (Debian's
docker.io), a Python base image (a debootstrap stand-in where Docker Hub is out of reach), a CPU
torch wheel for the export stage, and the CPU image built from the committed tree.

Each step returns a line for the report and raises (CalledProcessError, TimeoutError,
RuntimeError) when it cannot be done."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def sh(*cmd: str, check: bool = True, log: Path | None = None, stdin: int | None = None) -> str:
    if log is None:
        done = subprocess.run(cmd, check=check, capture_output=True, text=True, stdin=stdin)
        return done.stdout.strip()
    with log.open("a") as out:
        subprocess.run(cmd, check=check, stdout=out, stderr=subprocess.STDOUT, stdin=stdin)
    return ""


def poll(what: str, ready: Callable[[], bool], timeout_s: float, interval_s: float = 1.0) -> float:
    """Seconds until `ready()`; a script waiting on a daemon or a container, not a test."""
    started = time.monotonic()
    while not ready():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _docker_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def ensure_daemon(work: Path) -> str:
    if _docker_ok():
        return sh("docker", "version", "-f", "{{.Server.Version}}")
    if shutil.which("dockerd") is None:
        sh("apt-get", "install", "-y", "-q", "docker.io", log=work / "apt.log")
    log = Path(tempfile.gettempdir()) / "image-check-dockerd.log"
    # Its own session: the daemon outlives this script, as a service would.
    subprocess.Popen(
        ["dockerd"], stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True
    )
    waited = poll("dockerd", _docker_ok, 120)
    version = sh("docker", "version", "-f", "{{.Server.Version}}")
    return f"{version}, started in {waited:.0f} s (log: {log})"


def ensure_base(tag: str, work: Path) -> str:
    """A stand-in for python:3.11-slim-bookworm: Debian's python3 with venv and pip."""
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return f"{tag} (already built)"
    if shutil.which("debootstrap") is None:
        sh("apt-get", "install", "-y", "-q", "debootstrap", log=work / "apt.log")
    root = work / "rootfs"
    started = time.monotonic()
    sh(
        *("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}"),
        *("bookworm", str(root), DEBIAN_MIRROR),
        log=work / "debootstrap.log",
    )
    # This machine reaches the index through its own CA; the official image's pip would not.
    shutil.copyfile(CA_BUNDLE, root / str(CA_BUNDLE).lstrip("/"))
    # The official image's Python is not Debian's: pip may install into it (PEP 668 marker off).
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    env = {"LANG": "C.UTF-8", "PIP_CERT": CA_BUNDLE, "SSL_CERT_FILE": CA_BUNDLE}
    changes = [a for k, v in env.items() for a in ("--change", f"ENV {k}={v}")]
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None  # stdout=PIPE
    sh(
        "docker",
        "import",
        *changes,
        "--change",
        'CMD ["python3"]',
        "-",
        tag,
        stdin=tar.stdout.fileno(),
    )
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {root} failed")
    shutil.rmtree(root)
    python = sh("docker", "run", "--rm", tag, "python3", "--version")
    return f"{tag} from debootstrap in {time.monotonic() - started:.0f} s, {python}"


def cpu_torch_wheel(given: str | None, work: Path) -> Path:
    """The given wheel, or the one pip resolves for torch==2.13.0 here (a local find-links)."""
    if given:
        wheel = Path(given)
    else:
        pip = (sys.executable, "-m", "pip", "download", "torch==2.13.0", "--no-deps")
        sh(*pip, "-d", str(work / "wheels"))
        wheel = next((work / "wheels").glob("torch-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = z.read(name).decode()
    # CUDA builds name the CUDA version (+cu130) or depend on nvidia-* runtime wheels.
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    if "+cu" in wheel.name or any("nvidia-" in line for line in requires):
        raise RuntimeError(f"{wheel.name} is a CUDA build; give a CPU wheel with --torch-wheel")
    return wheel


def build(tag: str, base: str, torch_wheel: str | None, work: Path) -> str:
    """`docker build` of the committed tree (an image of a commit that can be named), torch
    from a CPU wheel served on loopback (the build runs with --network host), the rest from PyPI."""
    wheel = cpu_torch_wheel(torch_wheel, work)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheel.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = work / "context"
    context.mkdir()
    commit = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    sh("sh", "-c", f"git -C '{REPO}' archive HEAD | tar -x -C '{context}'")
    build_args = {
        "PYTHON_IMAGE": base,
        "TORCH_SPEC": f"torch @ http://127.0.0.1:{server.server_address[1]}/{wheel.name.replace('+', '%2B')}",
        "TORCH_INDEX_URL": "https://pypi.org/simple",
    }
    args = [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
    cmd = ["docker", "build", "--network", "host", "-t", tag, *args, str(context)]
    print("$ " + " ".join(cmd), flush=True)
    log = work / "build.log"
    started = time.monotonic()
    # The classic builder: Debian's docker.io 20.10 has no buildx for BuildKit.
    with log.open("w") as out:
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server.shutdown()
    took = time.monotonic() - started
    # Only the logs stay in `work`: the context and the wheel are hundreds of MB.
    shutil.rmtree(context)
    shutil.rmtree(work / "wheels", ignore_errors=True)
    if done.returncode != 0:
        print(log.read_text()[-4000:])
        raise RuntimeError(f"docker build exit {done.returncode} after {took:.0f} s (log {log})")
    return f"commit {commit}, {wheel.name}, {took / 60:.1f} min (log {log})"
