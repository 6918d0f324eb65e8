"""Re-validate a package's OpenVINO bf16 variant on this machine, as served (the session's streams
included), against the PyTorch reference in its fidelity set, with the runtime's thresholds:
what `tei-serve` does on another CPU class, forced here. Prints the figures against the ones the
manifest records.

    .venv/bin/python scripts/openvino_revalidate.py PACKAGE [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.fidelity_check import read_fidelity_set, validate_here
from tei_ort.runtime.providers import engine_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("package", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cpu = this_cpu()
    model = Model.load(
        args.package, RuntimeOptions("openvino", "bf16", intra_op_threads=args.threads)
    )
    fidelity_set = read_fidelity_set(args.package)
    if fidelity_set is None:
        raise SystemExit(f"{args.package} has no fidelity set")
    streams = getattr(model.session, "parallel_runs", 1)
    here = validate_here(
        model, fidelity_set, isa_class=cpu.isa_class.value, engine=engine_name(model.provider)
    )
    print(f"cpu: {cpu.describe()}; {streams} stream(s), {args.threads} threads")
    for label, v in (("recorded", model.variant.validation), ("here", here)):
        if v is not None:
            print(
                f"{label:9s} passed={v.passed} cosine min {v.cosine_min:.6f} "
                f"overlap@10 {v.overlap_at_10} ({v.texts} texts; {v.isa_class}, {v.engine})"
            )


if __name__ == "__main__":
    main()
