"""The ISA class from /proc/cpuinfo excerpts of the machines the server runs on, and this_cpu()
never failing where there is no /proc/cpuinfo."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tei_ort.runtime import cpu
from tei_ort.runtime.cpu import CpuInfo, IsaClass, classify, parse_cpuinfo, this_cpu


def x86(model: str, flags: str) -> str:
    return (
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
        f"model name\t: {model}\nstepping\t: 7\ncpu MHz\t\t: 2500.000\n"
        f"flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 sse4_1 "
        f"sse4_2 popcnt aes xsave avx f16c rdrand hypervisor {flags}\n"
        "bugs\t\t: spectre_v1 spectre_v2\nbogomips\t: 5000.00\n\n"
        # A second processor: the first block answers.
        f"processor\t: 1\nmodel name\t: {model}\nflags\t\t: fpu sse sse2 {flags}\n\n"
    )


def aarch64(part: str, features: str, implementer: str = "0x41") -> str:
    return (
        f"processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
        f"crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop {features}\n"
        f"CPU implementer\t: {implementer}\nCPU architecture: 8\nCPU variant\t: 0x1\n"
        f"CPU part\t: {part}\nCPU revision\t: 1\n\n"
    )


# (name, text, arch) -> (class, model, has_native_bf16)
CASES = [
    (
        "AMD EPYC Zen 3",
        x86("AMD EPYC 7R13 Processor", "avx2 fma bmi1 bmi2 sha_ni vaes vpclmulqdq"),
        "x86_64",
        (IsaClass.X86_AVX2, "AMD EPYC 7R13 Processor", False),
    ),
    (
        "AMD EPYC Zen 4",
        x86(
            "AMD EPYC 9R14 96-Core Processor",
            "avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512ifma "
            "avx512vbmi avx512_vbmi2 gfni avx512_vnni avx512_bitalg avx512_vpopcntdq",
        ),
        "x86_64",
        (IsaClass.X86_AVX512_BF16, "AMD EPYC 9R14 96-Core Processor", True),
    ),
    (
        "AMD EPYC Zen 5",
        x86(
            "AMD EPYC 9R45 64-Core Processor",
            "avx2 fma avx_vnni avx512_bf16 avx512f avx512dq avx512bw avx512vl avx512_vnni "
            "avx512_vp2intersect movdiri movdir64b",
        ),
        "x86_64",
        (IsaClass.X86_AVX512_BF16, "AMD EPYC 9R45 64-Core Processor", True),
    ),
    (
        "Intel Sapphire Rapids",
        x86(
            "Intel(R) Xeon(R) Platinum 8488C",
            "avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx_vnni "
            "amx_bf16 avx512_fp16 amx_tile amx_int8",
        ),
        "x86_64",
        (IsaClass.X86_AMX, "Intel(R) Xeon(R) Platinum 8488C", True),
    ),
    (
        "Intel Cascade Lake",
        x86(
            "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz",
            "avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni",
        ),
        "x86_64",
        (IsaClass.X86_AVX512_VNNI, "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz", False),
    ),
    (
        "Intel Skylake-SP",
        x86(
            "Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz",
            "avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl",
        ),
        "x86_64",
        (IsaClass.X86_AVX512, "Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", False),
    ),
    (
        "Intel Alder Lake",
        x86("12th Gen Intel(R) Core(TM) i7-12700K", "avx2 fma sha_ni gfni vaes avx_vnni"),
        "x86_64",
        (IsaClass.X86_AVX2_VNNI, "12th Gen Intel(R) Core(TM) i7-12700K", False),
    ),
    (
        "Intel Sandy Bridge, no avx2",
        x86("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", "pclmulqdq"),
        "x86_64",
        (IsaClass.X86_BASELINE, "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", False),
    ),
    (
        "Graviton2",
        aarch64("0xd0c", "asimddp ssbs"),
        "aarch64",
        (IsaClass.ARM_DOTPROD, "ARM Neoverse-N1", False),
    ),
    (
        "Graviton3",
        aarch64(
            "0xd40",
            "jscvt fcma sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs "
            "paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng",
        ),
        "aarch64",
        (IsaClass.ARM_BF16, "ARM Neoverse-V1", True),
    ),
    (
        "an unmapped aarch64 part with i8mm",
        aarch64("0x123", "asimddp i8mm", implementer="0x99"),
        "arm64",
        (IsaClass.ARM_I8MM, "aarch64 (implementer 0x99 part 0x123)", False),
    ),
    (
        "an aarch64 without dot product",
        aarch64("0xd08", ""),
        "aarch64",
        (IsaClass.ARM_BASELINE, "ARM Cortex-A72", False),
    ),
    ("empty text", "", "x86_64", (IsaClass.UNKNOWN, "", False)),
    (
        "garbage",
        "\x00\ufffd not cpuinfo\n:::\nflags without colon avx2\n",
        "x86_64",
        (IsaClass.UNKNOWN, "", False),
    ),
    (
        "riscv64",
        "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdc\nmmu\t\t: sv39\n",
        "riscv64",
        (IsaClass.UNKNOWN, "", False),
    ),
    (
        "ppc64le",
        "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nflags\t: avx2 fma\n",
        "ppc64le",
        (IsaClass.UNKNOWN, "", False),
    ),
]


@pytest.mark.parametrize(
    ("text", "arch", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parse_cpuinfo(text: str, arch: str, expected: tuple[IsaClass, str, bool]) -> None:
    info = parse_cpuinfo(text, arch, cores=4)
    assert (info.isa_class, info.model, info.has_native_bf16) == expected
    assert info.arch == arch and info.cores == 4
    assert info.flags <= cpu._WANTED.get(cpu._family(arch), frozenset())
    assert info.describe() == f"{info.model or arch} [{expected[0].value}]"


def test_flags_keep_only_the_features_that_matter() -> None:
    sapphire = parse_cpuinfo(CASES[3][1], "x86_64")
    assert sapphire.flags == {
        "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
        "avx_vnni", "amx_bf16", "amx_tile", "amx_int8",
    }  # fmt: skip
    graviton3 = parse_cpuinfo(CASES[9][1], "aarch64")
    assert graviton3.flags == {"asimd", "asimddp", "sve", "i8mm", "bf16"}  # not svebf16


def test_classify_takes_the_best_class_whose_flags_are_all_present() -> None:
    avx512 = frozenset({"avx512f", "avx512bw", "avx512vl"})
    assert classify("x86_64", avx512 | {"amx_bf16"}) is IsaClass.X86_AVX512  # amx_int8 missing
    assert classify("AMD64", frozenset({"avx512f", "avx2", "fma"})) is IsaClass.X86_AVX2
    assert classify("x86_64", frozenset({"avx2"})) is IsaClass.X86_BASELINE  # no fma
    assert classify("arm64", frozenset({"bf16", "i8mm", "asimddp"})) is IsaClass.ARM_BF16
    assert classify("s390x", frozenset({"avx2", "fma"})) is IsaClass.UNKNOWN


@pytest.fixture()
def fresh_cache() -> Iterator[None]:
    this_cpu.cache_clear()
    yield
    this_cpu.cache_clear()


def test_this_cpu_is_consistent_with_its_own_flags(fresh_cache: None) -> None:
    info = this_cpu()
    assert isinstance(info, CpuInfo) and info.cores >= 1
    assert info is this_cpu()  # read once
    if info.isa_class is not IsaClass.UNKNOWN:
        assert info.isa_class is classify(info.arch, info.flags)
    assert info.describe().endswith(f"[{info.isa_class.value}]")


def test_unreadable_cpuinfo_is_unknown(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu, "CPUINFO_PATH", tmp_path / "missing")
    info = this_cpu()
    assert info.isa_class is IsaClass.UNKNOWN and info.flags == frozenset()
    assert info.cores >= 1


@pytest.mark.parametrize(("system", "machine"), [("Windows", "AMD64"), ("Darwin", "x86_64")])
def test_other_systems_are_unknown(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch, system: str, machine: str
) -> None:
    monkeypatch.setattr(cpu.platform, "system", lambda: system)
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    info = this_cpu()
    assert (info.arch, info.isa_class, info.model) == (machine, IsaClass.UNKNOWN, "")


def test_apple_silicon_without_sysctl_is_unknown(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("sysctl")

    monkeypatch.setattr(cpu.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(cpu.subprocess, "run", missing)
    assert this_cpu().isa_class is IsaClass.UNKNOWN


def test_apple_silicon_from_sysctl(fresh_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = (
        "machdep.cpu.brand_string: Apple M2\nhw.optional.arm.FEAT_BF16: 1\n"
        "hw.optional.arm.FEAT_I8MM: 1\nhw.optional.arm.FEAT_DotProd: 1\nhw.optional.AdvSIMD: 1\n"
    )

    class Done:
        stdout = answer

    monkeypatch.setattr(cpu.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(cpu.subprocess, "run", lambda *a, **k: Done())
    info = this_cpu()
    assert (info.model, info.isa_class, info.has_native_bf16) == (
        "Apple M2",
        IsaClass.ARM_BF16,
        True,
    )
    assert info.describe() == "Apple M2 [arm-bf16]"
