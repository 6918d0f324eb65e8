"""A package's variants judged on a CPU class this machine is not, by running them under qemu-user.

Why: int8 fidelity depends on which kernels ONNX Runtime's MLAS picks, and it picks them from
CPUID (AVX2 without VNNI adds u8s8 products in saturating int16). Under `qemu-x86_64 -cpu Haswell`
CPUID reports AVX2/FMA and no AVX-512/VNNI, so MLAS really runs its AVX2 kernels; the figures are
those an AVX2 machine would measure. Emulation (TCG) is ~100x slower than native, so by default a
subset of the package's fidelity set runs: all short queries and the first --passages passages
(overlap@10 then ranks over those passages only: a weaker check than the full set's). Speed under
emulation means nothing and is never reported.

    .venv/bin/python scripts/emulated_fidelity.py .cache/validate/00-all-minilm-l6-v2 \
        --cpu Haswell --variants int8,int8-w7,fp32 --passages 24

Each variant runs in a child `qemu-x86_64 -cpu <cpu> <python> this-file --child ...` that writes
its output rows and what the child saw of the CPU (tei_ort.runtime.cpu's class from /proc/cpuinfo,
numpy's CPUID-based features); this process then judges them against the PyTorch reference with
tei_ort.fidelity.compare (the runtime's thresholds) and beside the same variant run natively.
qemu-user passes the host's /proc/cpuinfo through, so the child's tei_ort class is the host's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tei_ort.fidelity import FloatArray, compare, n_queries
from tei_ort.package import Task, Validation, VariantName
from tei_ort.runtime.fidelity_check import RUNTIME_RUNNERS, FidelitySet, read_fidelity_set
from tei_ort.runtime.model import Model, RuntimeOptions

REPO = Path(__file__).resolve().parents[1]
# The CPU features numpy detects at run time (x86: CPUID; aarch64: the kernel's HWCAP, which
# qemu-user emulates per -cpu) that decide MLAS's int8 kernels; numpy's names.
CPUID_FEATURES = (
    "AVX2",
    "FMA3",
    "AVX512F",
    "AVX512VNNI",
    "AVX512_SPR",
    "ASIMDDP",
    "ASIMDFHM",
    "SVE",
)


@dataclass(frozen=True)
class Subset:
    fidelity: FidelitySet
    rows: np.ndarray  # indices of the full set's rows that the subset keeps, in order


def subset(full: FidelitySet, queries: int | None, passages: int | None) -> Subset:
    """The first `queries` queries and first `passages` passages, with their reference rows.
    Row-per-text tasks only: token heads (BGE-M3's ColBERT rows) cannot be sliced per text."""
    if full.heads:
        raise ValueError(f"a fidelity set with token heads {sorted(full.heads)} cannot be cut")
    vset = full.vset
    nq, np_ = len(vset.queries), len(vset.passages)
    keep_q = nq if queries is None else min(queries, nq)
    keep_p = np_ if passages is None else min(passages, np_)
    if full.reference.shape[0] != nq + np_:
        raise ValueError("only row-per-text fidelity sets (embeddings, sparse) can be cut")
    rows = np.concatenate([np.arange(keep_q), nq + np.arange(keep_p)])
    small = replace(
        vset,
        queries=vset.queries[:keep_q],
        passages=vset.passages[:keep_p],
        rerank_queries=min(vset.rerank_queries, keep_q),
        rerank_passages=min(vset.rerank_passages, keep_p),
    )
    return Subset(FidelitySet(small, full.reference[rows]), rows)


def emulator_command(
    emulator: str,
    cpu: str,
    python: str,
    package: Path,
    variant: str,
    out: Path,
    args: list[str],
    cpuinfo: Path | None = None,
) -> list[str]:
    """The child's command line: `<emulator> -cpu <cpu> <python> <this file> --child ...`, inside
    a private mount namespace with `cpuinfo` bound over /proc/cpuinfo when one is given."""
    command = [
        *shlex.split(emulator),
        "-cpu",
        cpu,
        python,
        str(Path(__file__).resolve()),
        str(package),
        "--child",
        variant,
        "--out",
        str(out),
        *args,
    ]
    if cpuinfo is None:
        return command
    # qemu-user 7.2 passes the host's /proc/cpuinfo through, and ONNX Runtime's cpuinfo library
    # crashes (SIGSEGV at import) on x86 text in an aarch64 process; the bind mount lives and
    # dies with this one command's namespace.
    bind = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", bind, str(cpuinfo.resolve()), *command]


def run_variant(package: Path, variant: str, fidelity: FidelitySet) -> tuple[Task, FloatArray]:
    model = Model.load(
        package,
        RuntimeOptions(provider="cpu", variant=variant, allow_unvalidated=True, intra_op_threads=1),
    )
    return model.task, RUNTIME_RUNNERS[model.task](model, fidelity.vset)


def _cpuid_features() -> dict[str, bool]:
    # numpy's runtime dispatch never reads /proc/cpuinfo, so it sees qemu's -cpu model.
    umath = importlib.import_module("numpy._core._multiarray_umath")  # numpy >= 2
    features: dict[str, bool] = umath.__cpu_features__
    return {name: bool(features.get(name, False)) for name in CPUID_FEATURES}


def child(package: Path, variant: str, fidelity: FidelitySet, out: Path) -> None:
    from tei_ort.runtime.cpu import this_cpu

    _, output = run_variant(package, variant, fidelity)
    seen = {"tei_ort_class": this_cpu().isa_class.value, "cpuid": _cpuid_features()}
    np.savez(out, output=output, seen=np.array(json.dumps(seen)))


def judge(task: Task, variant: str, fidelity: FidelitySet, output: FloatArray) -> Validation:
    return compare(
        task, VariantName(variant), fidelity.reference, output, n_queries(task, fidelity.vset)
    )


def _figures(v: Validation) -> str:
    cos = f"cosine min {v.cosine_min:.6f}" if v.cosine_min is not None else "cosine -"
    ovl = f"overlap@10 {v.overlap_at_10:.4f}" if v.overlap_at_10 is not None else "overlap -"
    return f"{'PASS' if v.passed else 'FAIL'} {cos} {ovl} ({v.note})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--cpu", default="Haswell", help="qemu -cpu model (Haswell: AVX2+FMA)")
    parser.add_argument("--variants", default="int8,int8-w7,fp32")
    parser.add_argument("--queries", type=int, default=None, help="default: all")
    parser.add_argument("--passages", type=int, default=24, help="-1: all")
    parser.add_argument("--emulator", default="qemu-x86_64", help="e.g. 'qemu-aarch64 -L root'")
    parser.add_argument(
        "--cpuinfo", type=Path, default=None, help="a file bound over /proc/cpuinfo (aarch64)"
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter qemu runs")
    parser.add_argument(
        "--pythonpath", default="", help="prepended to the child's PYTHONPATH (foreign wheels)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="variants emulated at once")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the output rows")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    full = read_fidelity_set(args.package)
    if full is None:
        parser.error(f"{args.package} has no fidelity set")
    passages = None if args.passages < 0 else args.passages
    cut = subset(full, args.queries, passages)
    if args.child is not None:
        child(args.package, args.child, cut.fidelity, args.out)
        return 0

    keep = args.keep or Path(tempfile.mkdtemp(prefix="emulated_fidelity_"))
    keep.mkdir(parents=True, exist_ok=True)
    passthrough = ["--passages", str(args.passages)]
    if args.queries is not None:
        passthrough += ["--queries", str(args.queries)]
    # The child imports tei_ort from this checkout whichever interpreter runs it; only the child
    # gets --pythonpath (aarch64 wheels would break this x86 process).
    env = dict(os.environ)
    paths = [args.pythonpath, str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    variants = args.variants.split(",")
    pending = list(variants)
    running: dict[str, subprocess.Popen[bytes]] = {}
    outs = {v: keep / f"{args.package.name}.{args.cpu}.{v}.npz" for v in variants}
    nq, npass = len(cut.fidelity.vset.queries), len(cut.fidelity.vset.passages)
    print(f"{args.package.name} on emulated {args.cpu}: {nq} queries + {npass} passages")
    failed = False
    while pending or running:
        while pending and len(running) < args.jobs:
            v = pending.pop(0)
            cmd = emulator_command(
                args.emulator,
                args.cpu,
                args.python,
                args.package,
                v,
                outs[v],
                passthrough,
                args.cpuinfo,
            )
            running[v] = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)
        v, proc = next(iter(running.items()))
        if proc.wait() != 0:
            print(f"  {v}: the emulated run failed (exit {proc.returncode})")
            failed = True
        del running[v]
    for v in variants:
        if not outs[v].is_file():
            continue
        with np.load(outs[v], allow_pickle=False) as data:
            emulated, seen = data["output"], json.loads(str(data["seen"]))
        task, native = run_variant(args.package, v, cut.fidelity)
        diff = float(np.max(np.abs(emulated - native)))
        print(f"  {v} emulated: {_figures(judge(task, v, cut.fidelity, emulated))}")
        print(f"  {v} native:   {_figures(judge(task, v, cut.fidelity, native))}")
        print(f"  {v} max |emulated - native| {diff:.4g}; the child saw {seen}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
