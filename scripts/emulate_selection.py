"""What `tei-serve` without --variant would serve on another CPU class: the runtime's own variant
selection (re-validation where the recorded class differs, then the timed trial) run under
`qemu-x86_64 -cpu <cpu>`, with a /proc/cpuinfo of that CPU bound over the host's.

Why the bind mount: qemu-user passes the host's /proc/cpuinfo through, so under emulation
tei_ort.runtime.cpu names the host's class (x86-amx here), the recorded class matches and nothing
is re-validated, while MLAS (which reads CPUID) runs the emulated CPU's kernels. With the bound
file the runtime sees what a real machine of that class would show it.

Emulation is ~100x slower than native, so the package is copied (links to its graphs) with a
small subset of its fidelity set (--queries, --passages): the re-validation and the trial run on
those texts only. The verdicts' figures are for that subset; speed figures mean nothing here.

    .venv/bin/python scripts/emulate_selection.py .cache/validate/00-all-minilm-l6-v2 \
        --queries 12 --passages 2
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from emulated_fidelity import REPO, subset  # scripts/ is this script's sys.path[0]

from tei_ort.runtime.fidelity_check import FIDELITY_FILE, read_fidelity_set, write_fidelity_set

# /proc/cpuinfo's lines as Linux shows them on qemu's Haswell model (AVX2, FMA; no AVX-512).
HASWELL = {
    "model name": "Intel Core Processor (Haswell, no TSX)",
    "flags": "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
    "mmx fxsr sse sse2 syscall nx rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni "
    "pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor "
    "lahf_lm abm bmi1 avx2 smep bmi2 erms xsaveopt",
}


def cpuinfo_text(fields: dict[str, str], cpus: int = 2) -> str:
    block = "".join(f"{key}\t: {value}\n" for key, value in fields.items())
    return "\n".join(f"processor\t: {n}\n{block}" for n in range(cpus))


def small_copy(package: Path, into: Path, queries: int, passages: int) -> Path:
    """`package` with links to its files and a fidelity set cut to the first texts."""
    into.mkdir(parents=True, exist_ok=True)
    for item in package.iterdir():
        if item.name != FIDELITY_FILE:
            (into / item.name).symlink_to(item.resolve())
    full = read_fidelity_set(package)
    if full is None:
        raise SystemExit(f"{package} has no fidelity set")
    cut = subset(full, queries, passages).fidelity
    write_fidelity_set(into, cut.vset, cut.reference)
    return into


def child(package: Path, provider: str, checks: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")  # re-checks, trial
    from tei_ort.runtime.cpu import this_cpu
    from tei_ort.runtime.model import Model, RuntimeOptions

    options = RuntimeOptions(provider=provider, intra_op_threads=1, checks_dir=checks)
    model = Model.load(package, options)
    print(f"CPU as tei_ort sees it: {this_cpu().describe()}")
    print(f"served: {model.provider.value} {model.variant.name.value}")
    print(f"selection: {model.selection_note}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--cpu", default="Haswell")
    parser.add_argument("--provider", default="cpu", help="auto adds OpenVINO (much slower)")
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--passages", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checks", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.package, args.provider, args.checks)
        return 0
    if args.cpu != "Haswell":
        parser.error("only Haswell has a /proc/cpuinfo text here")
    work = Path(tempfile.mkdtemp(prefix="emulate_selection_"))
    package = small_copy(args.package, work / args.package.name, args.queries, args.passages)
    cpuinfo = work / "cpuinfo"
    cpuinfo.write_text(cpuinfo_text(HASWELL))
    bind = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    command = ["unshare", "--mount", "sh", "-c", bind, str(cpuinfo)]
    command += ["qemu-x86_64", "-cpu", args.cpu, sys.executable, str(Path(__file__).resolve())]
    command += [str(package), "--child", "--provider", args.provider, "--checks", str(work)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    print(f"{args.package.name}: {args.queries} queries + {args.passages} passages in {work}")
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
