"""tei-embed against tei-serve under its best load and sentence-transformers' encode, in one run.

    .venv/bin/python scripts/bulk_bench.py [--package bench-out/package] [--rows 20480]
    .venv/bin/python scripts/bulk_bench.py --rows 4096 --ray --skip-server --skip-st

The benchmark corpus (tei_ort.bench: CPython's pydoc topics, queries and passages mixed, 512
texts) repeated to --rows inputs, written as JSONL. Each engine sees the same texts:
  - tei-embed, as a user runs it (a fresh process; model load included in `wall`, and the job's own
    figures from its summary line),
  - tei-serve with 128 clients x 32 texts (the bench's best point) for --duration seconds,
  - sentence-transformers' default encode (fp32, batch 32) over all rows,
  - with --ray, tei-embed --ray on a new local Ray instance (this machine's cores), as one actor x
    --threads CPUs (the local run's shape: Ray's overhead alone) and --threads actors x 1 CPU.
Tokens are real tokens (special tokens in, padding out), counted by the package's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tei_ort.bench import server
from tei_ort.bench.__main__ import _default_source
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu

SUMMARY = re.compile(
    r"done: (\d+) inputs embedded, \d+ bad rows skipped, (\d+) tokens in ([\d.]+) s"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--package", type=Path, default=Path("bench-out/package"))
    p.add_argument("--rows", type=int, default=20480)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-st", action="store_true")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--ray", action="store_true", help="also tei-embed --ray (Ray's overhead)")
    args = p.parse_args()
    cpu = this_cpu()
    print(f"cpu: {cpu.describe()}", flush=True)
    base = corpus.mixed(512)
    texts = [base[i % len(base)] for i in range(args.rows)]
    probe = Model.load(args.package, RuntimeOptions())
    counts = [len(e) for e in probe.encode(texts)]
    tokens = sum(counts)
    print(
        f"corpus: {len(texts)} inputs, {tokens} real tokens; default here: "
        f"{probe.provider.value}:{probe.variant.name.value}",
        flush=True,
    )
    del probe
    rows: list[tuple[str, int, int, float]] = []
    # On a shared machine wall time depends on the neighbours: CPU seconds (user + system) and
    # the load average after each phase say how much of the machine each engine had.
    cpu_s: dict[str, float] = {}
    load: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "corpus.jsonl"
        source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        # (name, ONNX Runtime threads per engine, extra flags)
        runs: list[tuple[str, int, list[str]]] = [("tei-embed", args.threads, [])]
        if args.ray:
            runs += [
                (f"tei-embed --ray, 1 actor x {args.threads} CPUs", args.threads, ["--ray"]),
                (
                    f"tei-embed --ray, {args.threads} actors x 1 CPU",
                    1,
                    ["--ray", "--ray-actors", str(args.threads)],
                ),
            ]
        for index, (name, threads, extra) in enumerate(runs):
            command = [
                sys.executable,
                "-m",
                "tei_ort.bulk.cli",
                str(source),
                "-o",
                f"{tmp}/out-{index}",
                "--model-id",
                str(args.package),
                "--intra-op-threads",
                str(threads),
                *extra,
            ]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            # Ray starts its workers at nice 15 (RAY_worker_niceness): on a machine shared with
            # other work they would get less of the CPU than the local run, and the comparison
            # would measure the neighbours. Same priority for both.
            # Nor kill workers when the shared machine's memory is 95% used by the neighbours.
            env = {**os.environ, "RAY_worker_niceness": "0", "RAY_memory_monitor_refresh_ms": "0"}
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            wall = time.perf_counter() - started
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            if not extra:  # Ray's processes are not all reaped children: no CPU figure for them
                cpu_s[name] = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
                load[name] = os.getloadavg()[0]
            print(f"{name}: done, load average {os.getloadavg()[0]:.1f}", flush=True)
            match = SUMMARY.search(done.stderr)
            if match is None:
                raise SystemExit(f"no summary in {name}'s log:\n{done.stderr[-3000:]}")
            embedded, job_tokens, job_s = int(match[1]), int(match[2]), float(match[3])
            assert embedded == len(texts) and job_tokens == tokens, (embedded, job_tokens)
            rows.append((f"{name}, job (summary)", embedded, job_tokens, job_s))
            rows.append((f"{name}, process wall (load included)", embedded, job_tokens, wall))

    if not args.skip_server:
        with server.running_server(
            args.package, [], Path(tempfile.gettempdir()) / "bulk_bench_server.log"
        ) as srv:
            m = server.load(srv, base, counts[: len(base)], 128, 32, args.duration)
        rows.append(
            (
                f"tei-serve 128 clients x 32 texts ({args.duration:.0f} s)",
                m.texts,
                m.tokens,
                m.seconds,
            )
        )

    if not args.skip_st:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(args.threads)
        model = SentenceTransformer(str(_default_source()), device="cpu")
        model.encode(texts[:32], batch_size=32)
        started, cpu_started = time.perf_counter(), time.process_time()
        model.encode(texts, batch_size=32)
        cpu_s["sentence-transformers"] = time.process_time() - cpu_started
        load["sentence-transformers"] = os.getloadavg()[0]
        rows.append(
            (
                "sentence-transformers encode fp32 batch 32",
                len(texts),
                tokens,
                time.perf_counter() - started,
            )
        )

    st = next((r for r in rows if r[0].startswith("sentence")), None)
    print(
        f"{'engine':<52} {'inputs':>7} {'seconds':>8} {'inputs/s':>9} {'tokens/s':>9} {'vs ST':>6}"
    )
    for name, n, tok, seconds in rows:
        ratio = f"{(tok / seconds) / (st[2] / st[3]):.2f}x" if st else "-"
        print(
            f"{name:<52} {n:>7} {seconds:>8.1f} {n / seconds:>9.1f} {tok / seconds:>9.0f} {ratio:>6}"
        )

    for name, seconds in cpu_s.items():
        print(
            f"{name}: {seconds:.1f} CPU s ({tokens / seconds:.0f} tokens per CPU s), "
            f"load average after it {load[name]:.1f}"
        )


if __name__ == "__main__":
    main()
