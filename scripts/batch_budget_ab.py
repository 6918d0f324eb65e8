"""The server at several batch budgets, side by side: the same package served with each budget
pinned in its checks.json (what tei_ort.runtime.trial would cache), rounds interleaved, closed-loop
load from bench.server. Tells whether the budget the trial picks is the one the server runs fastest
with on this CPU.

    .venv/bin/python scripts/batch_budget_ab.py PACKAGE [--budgets 1024,2048,4096] [--rounds 2]
        [--serve-args "--provider cpu --variant int8"]
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from tei_ort.bench import server
from tei_ort.export import corpus
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.checks import CHECKS_FILE
from tei_ort.runtime.cpu import this_cpu
from tei_ort.serve.settings import load_settings


def pin(package: Path, label: str, budget: int) -> None:
    path = package / CHECKS_FILE
    data = json.loads(path.read_text())
    for entry in data["machines"].values():
        entry.setdefault("batch_tokens", {})[label] = {str(budget): 1.0}
    path.write_text(json.dumps(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--budgets", default="1024,2048,4096")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--serve-args", default="", help="tei-serve flags: another provider / variant")
    args = p.parse_args()
    serve_args = shlex.split(args.serve_args)
    print(f"cpu: {this_cpu().describe()}")
    flags = load_settings(["--model-id", str(args.package), *serve_args], {})
    # The server's choice (cached), or the provider / variant the flags name.
    model = Model.load(
        args.package, RuntimeOptions(provider=flags.provider, variant=flags.variant_name)
    )
    label = f"{model.provider.value}:{model.variant.name.value}"
    texts = corpus.mixed(512)
    counts = [len(e) for e in model.encode(texts)]
    points = [(32, 1), (8, 32), (128, 32)]
    rates: dict[tuple[int, int, int], list[float]] = {}
    for _ in range(args.rounds):
        for budget in (int(b) for b in args.budgets.split(",")):
            pin(args.package, label, budget)
            log = Path(f"/tmp/budget-{budget}.log")
            with server.running_server(args.package, serve_args, log) as srv:
                for c, per in points:
                    m = server.load(srv, texts, counts, c, per, args.duration)
                    rates.setdefault((budget, c, per), []).append(m.tokens_per_s)
    print(f"served {label}; tok/s per round")
    for (budget, c, per), values in sorted(rates.items()):
        print(f"budget {budget:5}  c={c:3} x{per:<3} " + "  ".join(f"{v:8,.0f}" for v in values))


if __name__ == "__main__":
    main()
