"""`python -m tei_ort.bench.soak` (scripts/soak): a long run at saturation against a real
`tei-serve` on loopback, with the server's resident memory sampled.

Closed-loop clients (more than the server can answer at once, so it never idles) send /embed
batches of mixed-length texts for --duration-s. Every --sample-s the server's RSS is read from
/proc. At the end: requests, statuses, throughput, the RSS curve, and its growth from the first
sample after --warm-up-s to the last. Exit 1 on any non-200 answer (429 allowed in the hostile profile) or growth >= 10%.

    scripts/soak --model-id path/to/package --duration-s 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

MAX_GROWTH = 0.10
HOSTILE_PAYLOAD_LIMIT = 16_000_000
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "deep",
    "learning",
    "models",
    "embed",
    "text",
]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _texts(rng: random.Random, batch: int) -> list[str]:
    # 1 to ~300 words: short queries and passages past the model's maximum, as real traffic.
    return [" ".join(rng.choices(WORDS, k=int(rng.paretovariate(1.2) * 8))) for _ in range(batch)]


def _long_text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length <= chars:  # the join has one space fewer than counted
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    return " ".join(words)[:chars]


def _mixed(rng: random.Random, args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    return "/embed", {"inputs": _texts(rng, args.batch)}


def _hostile(rng: random.Random, args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    # What a careless or hostile client sends (issue 14, item 5): /rerank with hundreds of long
    # passages to a reranker, /embed with 1,000 texts of 8,000 characters to an embedder.
    # truncate: true, so that every answer but 429 is a 200; the memory they hold must come back.
    if args.model_type == "reranker":
        passages = [
            _long_text(rng, rng.randint(2_000, 8_000)) for _ in range(rng.randint(200, 400))
        ]
        return "/rerank", {"query": _long_text(rng, 200), "texts": passages, "truncate": True}
    return "/embed", {"inputs": [_long_text(rng, 8_000) for _ in range(1_000)], "truncate": True}


PROFILES = {"mixed": _mixed, "hostile": _hostile}


async def _load(url: str, args: argparse.Namespace, statuses: Counter[int], stop: float) -> None:
    request = PROFILES[args.profile]
    # A 1,000-input request of 8,000-character texts takes minutes on two cores.
    timeout = aiohttp.ClientTimeout(total=None)

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < stop:
                path, body = request(rng, args)
                async with session.post(f"{url}{path}", json=body) as response:
                    await response.read()
                    statuses[response.status] += 1

    await asyncio.gather(*(client(seed) for seed in range(args.clients)))


async def _sample(pid: int, every_s: float, stop: float, curve: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while time.monotonic() < stop:
        curve.append((round(time.monotonic() - started, 1), round(_rss_mb(pid), 1)))
        await asyncio.sleep(every_s)
    curve.append((round(time.monotonic() - started, 1), round(_rss_mb(pid), 1)))


async def _run(url: str, pid: int, args: argparse.Namespace) -> tuple[Counter[int], list[tuple[float, float]], float]:  # fmt: skip
    statuses: Counter[int] = Counter()
    curve: list[tuple[float, float]] = []
    started = time.monotonic()
    stop = started + args.duration_s
    await asyncio.gather(_load(url, args, statuses, stop), _sample(pid, args.sample_s, stop, curve))
    return statuses, curve, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--warm-up-s", type=float, default=60)
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--start-timeout-s", type=float, default=1800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="texts per request (mixed)")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="mixed",
        help="mixed: /embed batches of short and long texts; hostile: /embed of 1,000 texts of "
        "8,000 characters (an embedder) or /rerank of hundreds of long passages (a reranker), "
        "429s allowed",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out/soak.json"))
    args, serve_args = parser.parse_known_args()
    port = _free_port()
    command = [sys.executable, "-m", "tei_ort.serve.cli", "--hostname", "127.0.0.1"]
    command += ["--port", str(port), "--prometheus-port", "0", *serve_args]
    if args.profile == "hostile" and "--payload-limit" not in serve_args:
        # A 1,000 x 8,000-character body is ~8 MB, past TEI's default 2 MB limit (a 413).
        command += ["--payload-limit", str(HOSTILE_PAYLOAD_LIMIT)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        # The first start may export the model (minutes on two busy cores).
        deadline = time.monotonic() + args.start_timeout_s
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tei-serve did not start (exit code {server.poll()})")
            time.sleep(0.5)
        args.model_type = _model_type(url)
        statuses, curve, elapsed = asyncio.run(_run(url, server.pid, args))
    finally:
        server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=60)
    after_warm_up = [rss for t, rss in curve if t >= args.warm_up_s] or [curve[-1][1]]
    growth = (after_warm_up[-1] - after_warm_up[0]) / after_warm_up[0]
    total = sum(statuses.values())
    report = {
        "duration_s": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "inputs_per_s": round(total * args.batch / elapsed, 1) if args.profile == "mixed" else None,
        "profile": args.profile,
        "model_type": args.model_type,
        "statuses": dict(statuses),
        "rss_mb_curve": curve,
        "rss_growth_after_warm_up": round(growth, 4),
        "server_exit_code": exit_code,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mb_curve"}))
    print("rss (s, MB): " + " ".join(f"{t:.0f}:{rss:.0f}" for t, rss in curve))
    raise SystemExit(0 if passed(args.profile, statuses, growth, exit_code) else 1)


def passed(profile: str, statuses: Counter[int], growth: float, exit_code: int) -> bool:
    """Some answers were 200, none failed (429, overloaded, is allowed under hostile load), memory
    grew under MAX_GROWTH after warm-up, and the server drained and exited 0 on SIGTERM."""
    allowed = {200, 429} if profile == "hostile" else {200}
    return 200 in statuses and set(statuses) <= allowed and growth < MAX_GROWTH and exit_code == 0


def _model_type(url: str) -> str:
    """TEI's /info names the model's kind: {"embedding": ...}, {"reranker": ...}, ..."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
        return str(next(iter(json.load(response)["model_type"])))


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "warning")
    main()
