"""Which CPU this is, reduced to its ISA class.

ONNX Runtime's and OpenVINO's CPU kernels are chosen per instruction set: AMX or AVX-512 BF16 run
bf16 natively, VNNI / dot-product instructions make int8 GEMMs fast, plain AVX2 runs both emulated.
So the speed of a variant, and its fidelity (bf16 is computed natively or emulated from fp32), is a
property of the ISA class, and every surface that says which variant is served says the class too.

Everything here is a pure function of /proc/cpuinfo's text (or, on aarch64 Linux, of the auxiliary
vector's HWCAP words) except `this_cpu`, which reads them once and never raises: an unreadable or
foreign CPU is `IsaClass.UNKNOWN`.
"""

from __future__ import annotations

import enum
import functools
import os
import platform
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

CPUINFO_PATH = Path("/proc/cpuinfo")
AUXV_PATH = Path("/proc/self/auxv")


class IsaClass(str, enum.Enum):
    X86_AMX = "x86-amx"  # amx_bf16 and amx_int8 (with avx512 f/bw/vl)
    X86_AVX512_BF16 = "x86-avx512-bf16"  # avx512f/bw/vl + avx512_bf16 (e.g. AMD Zen 4/5)
    X86_AVX512_VNNI = "x86-avx512-vnni"  # avx512f/bw/vl + avx512_vnni, no bf16
    X86_AVX512 = "x86-avx512"  # avx512f/bw/vl only
    X86_AVX2_VNNI = "x86-avx2-vnni"  # avx2 + fma + avx_vnni (Alder Lake-class), no avx512
    X86_AVX2 = "x86-avx2"  # avx2 + fma (e.g. AMD Zen 3)
    X86_BASELINE = "x86-baseline"  # older x86
    ARM_BF16 = "arm-bf16"  # aarch64 with bf16 (and usually i8mm): Graviton3/4, Neoverse V1/V2/N2
    ARM_I8MM = "arm-i8mm"  # aarch64 with i8mm, no bf16
    ARM_DOTPROD = "arm-dotprod"  # aarch64 with asimddp (Graviton2, Neoverse N1)
    ARM_BASELINE = "arm-neon"
    UNKNOWN = "unknown"  # other arch/OS or unreadable


_X86 = "x86"
_ARM = "arm"
# platform.machine() spellings -> family; anything else is UNKNOWN.
_FAMILIES = {
    "x86_64": _X86,
    "amd64": _X86,
    "i386": _X86,
    "i686": _X86,
    "x86": _X86,
    "aarch64": _ARM,
    "arm64": _ARM,
}
_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl"})
# Per family, best first: the first class whose flags are all present wins.
_CLASSES: dict[str, tuple[tuple[IsaClass, frozenset[str]], ...]] = {
    _X86: (
        (IsaClass.X86_AMX, _AVX512 | {"amx_bf16", "amx_int8"}),
        (IsaClass.X86_AVX512_BF16, _AVX512 | {"avx512_bf16"}),
        (IsaClass.X86_AVX512_VNNI, _AVX512 | {"avx512_vnni"}),
        (IsaClass.X86_AVX512, _AVX512),
        (IsaClass.X86_AVX2_VNNI, frozenset({"avx2", "fma", "avx_vnni"})),
        (IsaClass.X86_AVX2, frozenset({"avx2", "fma"})),
        (IsaClass.X86_BASELINE, frozenset()),
    ),
    _ARM: (
        (IsaClass.ARM_BF16, frozenset({"bf16"})),
        (IsaClass.ARM_I8MM, frozenset({"i8mm"})),
        (IsaClass.ARM_DOTPROD, frozenset({"asimddp"})),
        (IsaClass.ARM_BASELINE, frozenset()),
    ),
}
# The features kept in CpuInfo.flags, and the cpuinfo line that lists them.
_WANTED = {
    _X86: _AVX512
    | {"avx2", "fma", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"},
    _ARM: frozenset({"asimd", "asimddp", "i8mm", "bf16", "sve", "sve2"}),
}
_FLAGS_KEY = {_X86: "flags", _ARM: "features"}
_NATIVE_BF16 = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
# (CPU implementer, CPU part) -> name, for the aarch64 parts servers commonly run on.
_ARM_PARTS = {
    ("0x41", "0xd08"): "ARM Cortex-A72",  # Graviton1
    ("0x41", "0xd0c"): "ARM Neoverse-N1",  # Graviton2, Ampere Altra
    ("0x41", "0xd40"): "ARM Neoverse-V1",  # Graviton3
    ("0x41", "0xd49"): "ARM Neoverse-N2",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",  # Graviton4, Grace, Axion
    ("0x41", "0xd8e"): "ARM Neoverse-N3",
    ("0x41", "0xd84"): "ARM Neoverse-V3",
    ("0xc0", "0xac3"): "Ampere AmpereOne",
    ("0x48", "0xd01"): "HiSilicon Kunpeng-920",
}

# aarch64 Linux: the kernel's name for each AT_HWCAP / AT_HWCAP2 bit, bit 0 first (its uapi
# asm/hwcap.h; /proc/cpuinfo's Features line is printed from these bits with these names). Read
# where the cpuinfo has no Features line: qemu-user 7.2 shows an aarch64 process the x86 host's.
# fmt: off
_HWCAP_NAMES = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
    "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
    "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb",
    "paca", "pacg",
)
_HWCAP2_NAMES = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
    "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte",
    "ecv", "afp", "rpres", "mte3", "sme", "smei16i64", "smef64f64", "smei8i32", "smef16f32",
    "smeb16f32", "smef32f32", "smefa64",
)
# fmt: on
_AT_HWCAP, _AT_HWCAP2 = 16, 26


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # platform.machine(), e.g. "x86_64", "aarch64", "arm64"
    model: str  # "model name" (x86), a name for the ARM part, "" if unknown
    flags: frozenset[str]  # only the features in _WANTED, lower-case cpuinfo names
    isa_class: IsaClass
    cores: int

    @property
    def has_native_bf16(self) -> bool:
        return bool(self.flags & _NATIVE_BF16)

    def describe(self) -> str:
        """One line, e.g. "Intel(R) Xeon(R) Processor [x86-amx]"."""
        return f"{self.model or self.arch or 'unknown CPU'} [{self.isa_class.value}]"


def classify(arch: str, flags: frozenset[str]) -> IsaClass:
    for isa_class, required in _CLASSES.get(_family(arch), ()):
        if required <= flags:
            return isa_class
    return IsaClass.UNKNOWN


def parse_cpuinfo(text: str, arch: str, cores: int = 1) -> CpuInfo:
    """/proc/cpuinfo's text -> CpuInfo. No flags line (empty or garbage text) means UNKNOWN."""
    family = _family(arch)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:  # the first processor's block answers for all
            fields[key] = " ".join(value.split())
    listed = fields.get(_FLAGS_KEY[family]) if family in _FLAGS_KEY else None
    flags = frozenset(listed.lower().split()) & _WANTED[family] if listed is not None else None
    return CpuInfo(
        arch=arch,
        model=_model(family, fields),
        flags=flags or frozenset(),
        isa_class=classify(arch, flags) if flags is not None else IsaClass.UNKNOWN,
        cores=cores,
    )


def parse_auxv(data: bytes) -> tuple[int, int]:
    """(AT_HWCAP, AT_HWCAP2) from /proc/self/auxv's bytes: a 64-bit process's (type, value) pairs
    of native words. 0 for a word that is absent; a torn tail is ignored."""
    usable = len(data) - len(data) % 16
    entries = dict(struct.iter_unpack("=QQ", data[:usable]))
    return entries.get(_AT_HWCAP, 0), entries.get(_AT_HWCAP2, 0)


def hwcap_features(hwcap: int, hwcap2: int) -> frozenset[str]:
    """The kernel's feature names (as in cpuinfo's Features line) for aarch64 HWCAP bits."""
    return frozenset(
        name
        for names, bits in ((_HWCAP_NAMES, hwcap), (_HWCAP2_NAMES, hwcap2))
        for bit, name in enumerate(names)
        if bits >> bit & 1
    )


@functools.cache
def this_cpu() -> CpuInfo:
    arch = platform.machine()
    cores = os.cpu_count() or 1
    system = platform.system()
    try:
        if system == "Linux":
            info = parse_cpuinfo(CPUINFO_PATH.read_text(errors="replace"), arch, cores)
            if info.isa_class is IsaClass.UNKNOWN and _family(arch) == _ARM:
                return _from_hwcap(info, AUXV_PATH.read_bytes())
            return info
        if system == "Darwin" and _family(arch) == _ARM:
            return _apple_silicon(arch, cores)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return CpuInfo(arch, "", frozenset(), IsaClass.UNKNOWN, cores)


def _from_hwcap(info: CpuInfo, auxv: bytes) -> CpuInfo:
    """An aarch64 process whose cpuinfo lists no Features: the class from HWCAP, which is what
    ONNX Runtime's MLAS reads to pick its kernels too."""
    hwcap, hwcap2 = parse_auxv(auxv)
    if not hwcap:
        return info
    flags = hwcap_features(hwcap, hwcap2) & _WANTED[_ARM]
    return CpuInfo(info.arch, info.model, flags, classify(info.arch, flags), info.cores)


def _family(arch: str) -> str:
    return _FAMILIES.get(arch.lower(), "")


def _model(family: str, fields: dict[str, str]) -> str:
    if family != _ARM:
        return fields.get("model name", "")
    if "cpu implementer" not in fields:
        return ""  # an aarch64 kernel names no model; a "model name" here is another CPU's text
    implementer, part = fields["cpu implementer"].lower(), fields.get("cpu part", "").lower()
    return _ARM_PARTS.get(
        (implementer, part), f"aarch64 (implementer {implementer} part {part or '?'})"
    )


# macOS has no /proc/cpuinfo; sysctl names the features Apple silicon has (M1: no bf16/i8mm).
_SYSCTL_FEATURES = {
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.AdvSIMD": "asimd",
}


def _apple_silicon(arch: str, cores: int) -> CpuInfo:
    # Without -n, each answer is "key: value"; unknown keys go to stderr and the rest still print.
    out = subprocess.run(
        ["sysctl", "machdep.cpu.brand_string", *_SYSCTL_FEATURES],
        capture_output=True,
        text=True,
        timeout=2,
        check=False,
    ).stdout
    answers = dict(line.partition(": ")[::2] for line in out.splitlines())
    flags = frozenset(f for key, f in _SYSCTL_FEATURES.items() if answers.get(key) == "1")
    model = answers.get("machdep.cpu.brand_string", "")
    return CpuInfo(arch, model, flags, classify(arch, flags), cores)
