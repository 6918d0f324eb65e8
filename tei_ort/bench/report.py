"""The benchmark's outputs: a table on stdout, JSON, and a PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tei_ort.bench.measure import Measurement


def table(measurements: Sequence[Measurement], baseline: Measurement | None) -> str:
    header = f"{'engine':44} {'tok/s':>9} {'emb/s':>8} {'x base':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'err':>4}"
    lines = [header, "-" * len(header)]
    for m in measurements:
        ratio = m.tokens_per_s / baseline.tokens_per_s if baseline and baseline.tokens_per_s else 0
        cells = [m.percentile_ms(q) for q in (50, 90, 99)]
        lat = " ".join(f"{c:8.1f}" if c is not None else f"{'-':>8}" for c in cells)
        lines.append(
            f"{m.name:44} {m.tokens_per_s:9.0f} {m.embeddings_per_s:8.1f} {ratio:7.2f} {lat} {m.errors:4d}"
        )
    return "\n".join(lines)


def write_json(path: Path, measurements: Sequence[Measurement], extra: dict[str, object]) -> None:
    data = {**extra, "measurements": [m.to_dict() for m in measurements]}
    path.write_text(json.dumps(data, indent=2))


def draw(
    path: Path, measurements: Sequence[Measurement], references: Sequence[Measurement]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    server = [m for m in measurements if m.group == "server" and m.name.startswith("server c=")]
    for per_request in sorted({m.texts_per_request or 0 for m in server}):
        points = sorted(
            ((m.concurrency, m.tokens_per_s) for m in server if m.texts_per_request == per_request),
            key=lambda p: p[0] or 0,
        )
        left.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            label=f"server, {per_request} text(s)/request",
        )
    styles = ("--", ":", "-.", (0, (5, 1)), (0, (1, 1)))
    for index, ref in enumerate(references):
        left.axhline(
            ref.tokens_per_s,
            color=f"C{index + 2}",
            linestyle=styles[index % len(styles)],
            linewidth=1.2,
            label=ref.name,
        )
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("real tokens / s")
    left.set_title("Throughput against concurrency")
    left.legend(fontsize=7)
    with_latency = [m for m in server if m.latencies_s]
    if with_latency:
        right.boxplot(
            [[x * 1000 for x in m.latencies_s] for m in with_latency],
            tick_labels=[f"c{m.concurrency}x{m.texts_per_request}" for m in with_latency],
            showfliers=False,
        )
        right.set_yscale("log")
        right.set_ylabel("request latency (ms)")
        right.set_title("Latency distribution per load")
        right.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
