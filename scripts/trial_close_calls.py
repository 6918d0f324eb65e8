"""How often the first-start trials decide the wrong way on this machine, with one run each (as
before runtime/trial.repeated) and with close calls timed again.

For `--iterations` times, interleaved: the variant trial over the package's CPU EP candidates
(as runtime/selection times them) once, then repeated; the engine-layout trial (one session on
every core against two on half each, as serve/loading times it) once, then repeated. Prints
each reading and, at the end, how often each way chose each contender.

    .venv/bin/python scripts/trial_close_calls.py PACKAGE [--variants int8-w7,fp32] [--budget 512]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from tei_ort.engine.config import physical_cores
from tei_ort.runtime import Model, RuntimeOptions, fidelity_check, trial
from tei_ort.runtime.cpu import this_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--variants", default="int8-w7,fp32")
    parser.add_argument("--budget", type=int, default=512, help="the layout trial's batch budget")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    print(f"cpu: {this_cpu().describe()}")
    fidelity_set = fidelity_check.read_fidelity_set(args.package)
    assert fidelity_set is not None, "the package has no fidelity set"
    models = {
        f"cpu:{name}": Model.load(args.package, RuntimeOptions(provider="cpu", variant=name))
        for name in args.variants.split(",")
    }
    plans = {
        label: (model, trial.candidate_batches(model, fidelity_set.vset.texts))
        for label, model in models.items()
    }
    first = args.variants.split(",")[0]
    whole = models[f"cpu:{first}"]
    half = RuntimeOptions(provider="cpu", variant=first, intra_op_threads=physical_cores() // 2)
    halves = [Model.load(args.package, half) for _ in range(2)]
    batches = trial.layout_batches(whole, args.budget)
    assert batches is not None
    picks: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def layout(rates: dict[str, float]) -> str:
        return "2" if rates["2"] >= rates["1"] * (1 + trial.REPLICA_GAIN) else "1"

    most = trial.TRIAL_REPEATS
    for _ in range(args.iterations):
        for way, repeats in (("once", 1), ("repeated", most)):
            trial.TRIAL_REPEATS = repeats
            started = time.perf_counter()
            rates, runs = trial.repeated(
                lambda: trial.fastest(plans), trial.too_close_to_rank, "variants"
            )
            variant_s = time.perf_counter() - started
            best = max(rates, key=lambda k: rates[k])
            picks[f"variant, {way}"][best] += 1
            started = time.perf_counter()
            layouts, layout_runs = trial.repeated(
                lambda: trial.replica_rates(whole, halves, batches),
                trial.near_the_replica_margin,
                "engine layouts",
            )
            layout_s = time.perf_counter() - started
            picks[f"layout, {way}"][layout(layouts)] += 1
            ratio = " / ".join(f"{rates[k]:,.0f}" for k in plans)
            print(
                f"{way:8s} variants {ratio} -> {best} ({runs} runs, {variant_s:.1f} s); "
                f"layout 2/1 {layouts['2'] / layouts['1']:.3f} -> {layout(layouts)} "
                f"({layout_runs} runs, {layout_s:.1f} s)",
                flush=True,
            )
    for key, counter in picks.items():
        print(f"{key}: {dict(counter)}")


if __name__ == "__main__":
    main()
