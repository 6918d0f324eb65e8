"""What `tei-serve` without --variant would serve on aarch64: the runtime's own variant selection
(every variant re-validated on ARM's kernels, since the package was measured on x86; then the
timed trial) run by an aarch64 CPython under `qemu-aarch64 -cpu <cpu>`.

Under qemu-user ONNX Runtime's MLAS picks its ARM kernels from HWCAP, which qemu emulates per
-cpu model (cortex-a72: NEON only; neoverse-n1: + dot product; max: + SVE2, i8mm, bf16), so the
numbers are ARM's; their speed means nothing (TCG, ~100x slower) and is never reported as such.

qemu-user 7.2 passes the host's x86 /proc/cpuinfo through: ONNX Runtime's cpuinfo library then
dies (SIGSEGV at import) and tei_ort would see no ARM features. So each run binds an aarch64
/proc/cpuinfo over it in a private mount namespace, its Features line decoded from the HWCAP
the emulated CPU reports (tei_ort.runtime.cpu.hwcap_features: the kernel's own names), with the
MIDR part of a real core that has those features.

    scripts/emulate_aarch64_setup.sh /tmp/arm     # or any aarch64 CPython with tei_ort's deps
    .venv/bin/python scripts/emulate_arm.py PACKAGE --cpus cortex-a72,neoverse-n1,max \
        --root /tmp/arm/root --python /tmp/arm/venv/bin/python3.11
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from emulate_selection import small_copy  # scripts/ is this script's sys.path[0]
from emulated_fidelity import REPO

from tei_ort.runtime.cpu import hwcap_features, parse_auxv

# qemu -cpu -> (CPU implementer, CPU part) of a real core with the features qemu gives that model.
# qemu 7.2's "max" has every feature it emulates (SVE2, i8mm, bf16, ...): shown as a Neoverse-V2.
MIDR = {
    "cortex-a72": ("0x41", "0xd08"),  # Graviton1
    "neoverse-n1": ("0x41", "0xd0c"),  # Graviton2, Ampere Altra
    "a64fx": ("0x46", "0x001"),  # Fujitsu A64FX: SVE without dot product
    "max": ("0x41", "0xd4f"),  # Graviton4, Grace
}
AUXV_PROBE = "import sys; sys.stdout.buffer.write(open('/proc/self/auxv', 'rb').read())"


def qemu(cpu: str, root: Path) -> list[str]:
    return ["qemu-aarch64", "-cpu", cpu, "-L", str(root)]


def emulated_features(cpu: str, root: Path, python: str) -> frozenset[str]:
    """The kernel's names for the HWCAP / HWCAP2 bits qemu reports for `cpu`."""
    auxv = subprocess.run(
        [*qemu(cpu, root), python, "-c", AUXV_PROBE], capture_output=True, check=True
    ).stdout
    hwcap, hwcap2 = parse_auxv(auxv)
    return hwcap_features(hwcap, hwcap2)


def cpuinfo_text(cpu: str, features: frozenset[str], cpus: int = 2) -> str:
    implementer, part = MIDR[cpu]
    block = (
        f"BogoMIPS\t: 50.00\nFeatures\t: {' '.join(sorted(features))}\n"
        f"CPU implementer\t: {implementer}\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        f"CPU part\t: {part}\nCPU revision\t: 1\n"
    )
    return "\n".join(f"processor\t: {n}\n{block}" for n in range(cpus))


def child(package: Path, provider: str) -> None:
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")  # re-checks, trial
    import onnxruntime as ort

    from tei_ort.runtime.cpu import this_cpu
    from tei_ort.runtime.model import Model, RuntimeOptions

    cpu = this_cpu()
    print(f"CPU as tei_ort sees it: {cpu.describe()} flags {sorted(cpu.flags)}")
    print(f"onnxruntime {ort.__version__}: {ort.get_available_providers()}", flush=True)
    model = Model.load(package, RuntimeOptions(provider=provider, intra_op_threads=1))
    print(f"served: {model.provider.value} {model.variant.name.value}")
    print(f"selection: {model.selection_note}")
    # The verdicts as the runtime cached them (the package copy is writable): every figure.
    checks = json.loads((package / "checks.json").read_text())
    for key, entry in checks["machines"].items():
        if key.startswith(cpu.describe()):
            for label, verdict in sorted(entry["verdicts"].items()):
                v = verdict["validation"] or {}
                print(
                    f"verdict {label}: passed={v.get('passed')} cosine_min={v.get('cosine_min')} "
                    f"overlap@10={v.get('overlap_at_10')} texts={v.get('texts')} "
                    f"class={v.get('isa_class')} engine={v.get('engine')} note={v.get('note')!r}"
                )
    sys.stdout.flush()


def run(args: argparse.Namespace, cpu: str, package: Path, work: Path) -> int:
    features = emulated_features(cpu, args.root, args.python)
    cpuinfo = work / f"cpuinfo.{cpu}"
    cpuinfo.write_text(cpuinfo_text(cpu, features))
    print(f"== qemu -cpu {cpu}: HWCAP features {' '.join(sorted(features))}", flush=True)
    # The bind mount lives and dies with this one command's namespace.
    bind = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
    command = ["unshare", "--mount", "sh", "-c", bind, str(cpuinfo)]
    command += [*qemu(cpu, args.root), args.python, str(Path(__file__).resolve())]
    command += [str(package), "--child", "--provider", args.provider]
    paths = [str(REPO), args.pythonpath]  # this checkout's tei_ort, then the aarch64 wheels
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--cpus", default="cortex-a72,neoverse-n1,max", help=f"of {list(MIDR)}")
    parser.add_argument("--provider", default="auto", help="auto adds OpenVINO where it has bf16")
    parser.add_argument("--queries", type=int, default=None, help="default: the whole set")
    parser.add_argument("--passages", type=int, default=None, help="default: the whole set")
    parser.add_argument("--root", type=Path, default=Path("/tmp/arm/root"), help="qemu -L")
    parser.add_argument("--python", default="/tmp/arm/venv/bin/python3.11", help="aarch64")
    parser.add_argument("--pythonpath", default="", help="the aarch64 wheels, if not in a venv")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.package, args.provider)
        return 0
    failed = 0
    for cpu in args.cpus.split(","):
        if cpu not in MIDR:
            parser.error(f"unknown --cpus entry {cpu!r}; choose from {', '.join(MIDR)}")
        # A fresh copy per CPU: links to the graphs, a fidelity set (cut if asked), no checks.
        work = Path(tempfile.mkdtemp(prefix=f"emulate_arm_{cpu}_"))
        package = small_copy(args.package, work / "package", args.queries, args.passages)
        (package / "checks.json").unlink(missing_ok=True)
        failed |= run(args, cpu, package, work)
    return failed


if __name__ == "__main__":
    sys.exit(main())
