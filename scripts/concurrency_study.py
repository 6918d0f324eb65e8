"""Many small requests, side by side: two or more builds of the server (code roots) on the same
package and serve arguments, measured in one run with their points interleaved (A, B, A, B, ...
per point, `--rounds` times), so that a shared, noisy machine affects every build alike.

Per build: a short query's p50 through the server against the raw runtime in this process (same
provider and variant; the two alternate query by query, bench.server.short_queries), closed-loop
throughput at each concurrency with one text per request (`--per-request` adds others), and
the wait of a one-text request sent 0.3 s after a 1,000-input one (with the server's own
x-tokenization-time and x-queue-time for it).

    .venv/bin/python scripts/concurrency_study.py PACKAGE --build before=/tmp/base \
        --build after=. --serve-args "--provider cpu --variant fp32"

A build is NAME=ROOT: the server runs `python -m tei_ort.serve` with ROOT first on the path.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from tei_ort.bench.server import load, running_server, short_queries
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions


async def small_behind_big(url: str, big: list[str], small: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:

        async def post(inputs: object) -> tuple[float, dict[str, str]]:
            sent = time.perf_counter()
            async with session.post(url + "/embed", json={"inputs": inputs}) as response:
                await response.read()
                assert response.status == 200, response.status
                return time.perf_counter() - sent, dict(response.headers)

        bulk = asyncio.create_task(post(big))
        await asyncio.sleep(0.3)
        (waited, headers), (bulk_s, _) = await post([small]), await bulk
    return {
        "small_s": waited,
        "small_tokenization_ms": float(headers["x-tokenization-time"]),
        "small_queue_ms": float(headers["x-queue-time"]),
        "bulk_s": bulk_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("package", type=Path)
    p.add_argument("--build", action="append", required=True, help="NAME=ROOT (repeat)")
    p.add_argument("--serve-args", default="")
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--per-request", default="1", help="texts per request, e.g. 1,32")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per point and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--out", type=Path, default=Path("/tmp/concurrency_study"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    builds = dict(item.split("=", 1) for item in args.build)
    serve_args = args.serve_args.split()
    # (concurrency, texts per request) points, one text per request first
    points = [
        (int(c), int(n)) for n in args.per_request.split(",") for c in args.concurrency.split(",")
    ]
    texts = corpus.mixed(args.texts)
    shorts = corpus.queries(64)

    # The raw floor: same provider and variant as the servers, tokenize + forward, in process.
    provider = (
        serve_args[serve_args.index("--provider") + 1] if "--provider" in serve_args else "auto"
    )
    variant = serve_args[serve_args.index("--variant") + 1] if "--variant" in serve_args else None
    model = Model.load(args.package, RuntimeOptions(provider=provider, variant=variant))
    counts = [len(e) for e in model.encode(texts)]
    print(f"served: {model.provider.value} {model.variant.name.value}; corpus {len(texts)} texts")

    def raw_short(text: str) -> None:
        model.forward(model.encode([text]))

    short_counts = [len(e) for e in model.encode(shorts)]
    for text in shorts:  # warm the shapes
        raw_short(text)
    tps: dict[tuple[str, tuple[int, int]], list[float]] = {}
    p50s: dict[tuple[str, tuple[int, int]], list[float]] = {}
    short: dict[str, list[float]] = {name: [] for name in builds}
    raw: list[float] = []
    big: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                running_server(
                    args.package,
                    [*serve_args, "--prometheus-port", "0"],
                    args.out / f"{name}.log",
                    root=Path(root),
                )
            )
            for name, root in builds.items()
        }
        for srv in servers.values():  # warm-up: shapes, connections
            load(srv, texts, counts, 8, 1, 1.0)
        for _ in range(args.rounds):
            for name, srv in servers.items():
                served, direct = short_queries(srv, raw_short, shorts, short_counts, rounds=1)
                short[name] += served.latencies_s
                raw += direct.latencies_s
            for c, n in points:
                for name, srv in servers.items():
                    m = load(srv, texts, counts, c, n, args.duration)
                    assert m.errors == 0, f"{name}: {m.errors} errors"
                    tps.setdefault((name, (c, n)), []).append(m.tokens_per_s)
                    p50s.setdefault((name, (c, n)), []).append(m.percentile_ms(50) or 0.0)
            if not args.skip_big:
                bulk = [texts[i % len(texts)] for i in range(1000)]
                for name, srv in servers.items():
                    big[name].append(asyncio.run(small_behind_big(srv.url, bulk, shorts[0])))

    raw_p50 = statistics.median(raw) * 1000
    names = list(builds)
    print(
        f"\nshort query p50 (raw {model.provider.value} {model.variant.name.value}: {raw_p50:.2f} ms)"
    )
    for name in names:
        p50 = statistics.median(short[name]) * 1000
        print(f"  {name:12} {p50:6.2f} ms  overhead {p50 - raw_p50:+.2f} ms")
    print("\nreal tok/s, c requests of n texts (mean of rounds; p50 latency ms)")
    print("  " + " ".join(f"{f'c={c} x{n}':>18}" for c, n in points))
    for name in names:
        cells = [
            f"{statistics.mean(tps[(name, pt)]):8.0f} ({statistics.mean(p50s[(name, pt)]):6.1f})"
            for pt in points
        ]
        print(f"  {name:12}" + " ".join(f"{cell:>18}" for cell in cells))
    if len(names) > 1:
        first = names[0]
        for name in names[1:]:
            ratios = [
                statistics.mean(tps[(name, pt)]) / statistics.mean(tps[(first, pt)])
                for pt in points
            ]
            print(
                f"  {name}/{first}: "
                + " ".join(f"c={c}x{n} {r:.2f}x" for (c, n), r in zip(points, ratios, strict=True))
            )
    if not args.skip_big:
        print("\none-text request 0.3 s after a 1,000-input request (per round)")
        for name in names:
            for r in big[name]:
                print(
                    f"  {name:12} waited {r['small_s'] * 1000:7.0f} ms (its tokenization "
                    f"{r['small_tokenization_ms']:.0f} ms, queue {r['small_queue_ms']:.0f} ms); "
                    f"bulk {r['bulk_s']:.2f} s"
                )


if __name__ == "__main__":
    main()
