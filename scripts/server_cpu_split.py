"""Where a loaded server's CPU time goes, by thread: start `tei-serve` on a package, drive it with
the benchmark's closed-loop clients, and read each of its threads' user + system time from
/proc/PID/task/*/stat before and after the load (Linux only). Python threads are named by
`py-spy dump` (the bench extra installs py-spy): the forward threads (`tei-forward*`: the call
into the runtime, padding, pooling, conversion), the event loop (`MainThread`: HTTP, JSON, the
request path), the tokenization workers; every other thread is native, OpenVINO's or ONNX
Runtime's worker pools, where the graph runs. The load generator's own CPU time (this process: aiohttp, JSON) is
reported beside it, since on a small machine it shares the cores with the server.

    .venv/bin/python scripts/server_cpu_split.py PACKAGE [--concurrency 128] [--per-request 32]
        [--duration 15] [--serve-args "--provider openvino"]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tei_ort.bench import server
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu

TICKS = os.sysconf("SC_CLK_TCK")
# Names that differ only by a worker's number are one group ("ThreadPoolExecutor-0_1" -> "...-0_").
_NUMBER = re.compile(r"\d+$")


_PY_SPY_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]*)"', re.MULTILINE)


def python_threads(pid: int) -> dict[str, str]:
    """Native thread id -> Python thread name, from `py-spy dump` ({} without py-spy)."""
    spy = Path(sys.executable).parent / "py-spy"
    try:
        dump = subprocess.run(
            [str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {tid: _NUMBER.sub("", name) for tid, name in _PY_SPY_THREAD.findall(dump)}


def thread_seconds(pid: int, names: dict[str, str]) -> Counter[str]:
    """CPU seconds (user + system) of each thread group of process `pid` so far."""
    total: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = names.get(task.name, "native (runtime worker pools)")
        total[name] += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--per-request", type=int, default=32)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--serve-args", default="")
    args = p.parse_args()
    print(f"cpu: {this_cpu().describe()}")
    texts = corpus.mixed(512)
    probe = Model.load(args.package, RuntimeOptions("cpu", "fp32", intra_op_threads=1))
    counts = [len(e) for e in probe.encode(texts)]
    log = Path(tempfile.mkdtemp()) / "server.log"
    with server.running_server(args.package, args.serve_args.split(), log) as srv:
        server.load(srv, texts, counts, args.concurrency, args.per_request, 3.0)  # warm
        names = python_threads(srv.process.pid)
        before, own_before = thread_seconds(srv.process.pid, names), os.times()
        wall = time.perf_counter()
        measured = server.load(
            srv, texts, counts, args.concurrency, args.per_request, args.duration
        )
        wall = time.perf_counter() - wall
        after, own_after = thread_seconds(srv.process.pid, names), os.times()
    used = after - before
    own = (own_after.user - own_before.user) + (own_after.system - own_before.system)
    total = sum(used.values()) + own
    print(
        f"c={args.concurrency} x{args.per_request}: {measured.tokens_per_s:,.0f} tok/s over "
        f"{wall:.1f} s; CPU {total:.1f} s of {wall * (os.cpu_count() or 1):.1f} core-seconds"
    )
    for name, seconds in used.most_common():
        if seconds >= 0.05:
            print(f"  server {name:28s} {seconds:7.2f} s  {seconds / total:6.1%}")
    print(f"  load generator (this process)   {own:7.2f} s  {own / total:6.1%}")
    print(f"server log: {log}")


if __name__ == "__main__":
    main()
