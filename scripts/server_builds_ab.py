"""Two or more builds of the server (source trees) on one package, side by side: each load point
(clients x texts per request) runs on each build in turn, the order reversed every round, so a
slow spell of a shared machine falls on every build alike. Reported per point: each build's
real tokens/s summed over its rounds, and its ratio to the first build's.

    git archive HEAD tei_ort | tar -x -C /tmp/base
    .venv/bin/python scripts/server_builds_ab.py PACKAGE --build before=/tmp/base --build after=. \
        [--points 1x1,32x1,128x32] [--duration 6] [--rounds 3] [--serve-args "..."]

A build is NAME=ROOT[::ARGS]: its server runs `python -m tei_ort.serve` with ROOT first on the
path, with --serve-args and then its own ARGS (e.g. `one=.::--intra-op-threads 1`).
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from tei_ort.bench import compare, server
from tei_ort.bench.measure import Measurement
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--build", action="append", required=True, help="NAME=ROOT (repeat)")
    p.add_argument("--points", default="1x1,32x1,128x32", help="CLIENTSxTEXTS, comma separated")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-args", default="")
    args = p.parse_args()
    builds = [b.split("=", 1) for b in args.build]
    points = [compare.Point(*map(int, x.split("x"))) for x in args.points.split(",")]
    print(f"cpu: {this_cpu().describe()}")
    texts = corpus.mixed(512)
    probe = Model.load(args.package, RuntimeOptions("cpu", "fp32", intra_op_threads=1))
    counts = [len(e) for e in probe.encode(texts)]
    logs = Path(tempfile.mkdtemp(prefix="builds_ab-"))
    runs: dict[tuple[str, compare.Point], list[Measurement]] = {}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                server.running_server(
                    args.package,
                    [*args.serve_args.split(), *build_args.split()],
                    logs / f"{name}.log",
                    Path(root),
                )
            )
            for name, (root, _, build_args) in ((n, r.partition("::")) for n, r in builds)
        }
        names = [name for name, _ in builds]
        for round_ in range(args.rounds):
            for point in points:
                for name in names if round_ % 2 == 0 else names[::-1]:
                    runs.setdefault((name, point), []).append(
                        server.load(
                            servers[name],
                            texts,
                            counts,
                            point.concurrency,
                            point.texts_per_request,
                            args.duration,
                        )
                    )
    for point in points:
        merged = {n: compare.merge(runs[n, point]) for n in names}
        base = merged[names[0]].tokens_per_s
        line = "  ".join(
            f"{n} {m.tokens_per_s:8,.0f} tok/s ({m.tokens_per_s / base:4.2f}x, "
            f"p50 {m.percentile_ms(50) or 0:7.1f} ms, {m.errors} errors)"
            for n, m in merged.items()
        )
        rounds = "  ".join(
            f"{n}: " + "/".join(f"{r.tokens_per_s:,.0f}" for r in runs[n, point]) for n in names
        )
        print(f"c={point.concurrency} x{point.texts_per_request}: {line}\n    rounds {rounds}")
    print(f"server logs: {logs}")


if __name__ == "__main__":
    main()
