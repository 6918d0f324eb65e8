"""aarch64 features from the auxiliary vector's HWCAP words, for a process whose /proc/cpuinfo has
no Features line (qemu-user 7.2 shows an aarch64 process the x86 host's cpuinfo)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tei_ort.runtime import cpu
from tei_ort.runtime.cpu import IsaClass, hwcap_features, parse_auxv, this_cpu

from .test_cpu import CASES, x86

# Known answers, the bits worked out by hand from the kernel's uapi asm/hwcap.h.
NEOVERSE_N1 = (  # Graviton2's Features line, and its HWCAP
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp ssbs",
    0x10119FFF,
    0,
)
GRAVITON3 = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "jscvt fcma sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg "
    "dcpodp svei8mm svebf16 i8mm bf16 dgh rng",
    0xDFFFFFFF,  # all of bits 0-31 but 29 (sb)
    0x1F201,  # dcpodp(0) svei8mm(9) svebf16(12) i8mm(13) bf16(14) dgh(15) rng(16)
)
# What qemu-aarch64 7.2 reports per -cpu model (read from /proc/self/auxv under it).
QEMU = {
    "cortex-a72": (0x8FB, 0x0, IsaClass.ARM_BASELINE),
    "neoverse-n1": (0x119FFB, 0x0, IsaClass.ARM_DOTPROD),
    "a64fx": (0x415FFB, 0x0, IsaClass.ARM_BASELINE),  # SVE, but no dot product
    "max": (0xECFFFFFB, 0x7F877FFF, IsaClass.ARM_BF16),
}


def auxv(*pairs: tuple[int, int]) -> bytes:
    """A 64-bit process's /proc/self/auxv: (type, value) words, AT_NULL last."""
    return b"".join(struct.pack("=QQ", t, v) for t, v in (*pairs, (0, 0)))


@pytest.mark.parametrize(
    ("line", "hwcap", "hwcap2"), [NEOVERSE_N1, GRAVITON3], ids=["Neoverse-N1", "Graviton3"]
)
def test_hwcap_bits_have_the_kernels_feature_names(line: str, hwcap: int, hwcap2: int) -> None:
    assert hwcap_features(hwcap, hwcap2) == frozenset(line.split())


def test_qemu_cortex_a72_has_neon_and_crypto_only() -> None:
    features = hwcap_features(*QEMU["cortex-a72"][:2])
    assert features == {"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"}


def test_parse_auxv_reads_hwcap_and_hwcap2() -> None:
    data = auxv((33, 0xFFFF0000), (16, 0x119FFB), (6, 4096), (26, 0x7F877FFF), (25, 0x1234))
    assert parse_auxv(data) == (0x119FFB, 0x7F877FFF)
    assert parse_auxv(data + b"\x01\x02\x03") == (0x119FFB, 0x7F877FFF)  # a torn tail
    assert parse_auxv(auxv((16, 0x8FB))) == (0x8FB, 0)  # an old kernel: no AT_HWCAP2
    assert parse_auxv(b"") == (0, 0)


@pytest.fixture()
def aarch64_under_qemu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[tuple[Path, Path]]:
    """An aarch64 Linux process shown the x86 host's /proc/cpuinfo (qemu-user's pass-through)."""
    cpuinfo, auxv_file = tmp_path / "cpuinfo", tmp_path / "auxv"
    cpuinfo.write_text(x86("Intel(R) Xeon(R) Processor", "avx2 fma avx512f amx_bf16 amx_int8"))
    monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu, "CPUINFO_PATH", cpuinfo)
    monkeypatch.setattr(cpu, "AUXV_PATH", auxv_file)
    this_cpu.cache_clear()
    yield cpuinfo, auxv_file
    this_cpu.cache_clear()


@pytest.mark.parametrize("qemu_cpu", list(QEMU))
def test_x86_cpuinfo_in_an_aarch64_process_takes_the_class_from_hwcap(
    aarch64_under_qemu: tuple[Path, Path], qemu_cpu: str
) -> None:
    hwcap, hwcap2, expected = QEMU[qemu_cpu]
    aarch64_under_qemu[1].write_bytes(auxv((16, hwcap), (26, hwcap2)))
    info = this_cpu()
    assert info.isa_class is expected
    assert info.model == ""  # not the x86 host's "model name"
    assert info.describe() == f"aarch64 [{expected.value}]"


def test_max_flags_are_the_wanted_subset(aarch64_under_qemu: tuple[Path, Path]) -> None:
    aarch64_under_qemu[1].write_bytes(auxv((16, 0xECFFFFFB), (26, 0x7F877FFF)))
    info = this_cpu()
    assert info.flags == {"asimd", "asimddp", "sve", "sve2", "i8mm", "bf16"}
    assert info.has_native_bf16


@pytest.mark.parametrize("content", [None, b"", auxv((6, 4096))], ids=["missing", "empty", "none"])
def test_no_hwcap_leaves_it_unknown(
    aarch64_under_qemu: tuple[Path, Path], content: bytes | None
) -> None:
    if content is not None:
        aarch64_under_qemu[1].write_bytes(content)
    info = this_cpu()
    assert (info.isa_class, info.flags, info.model) == (IsaClass.UNKNOWN, frozenset(), "")


def test_an_arm_kernels_features_line_is_used_as_is(
    aarch64_under_qemu: tuple[Path, Path],
) -> None:
    graviton2 = next(text for name, text, _, _ in CASES if name == "Graviton2")
    aarch64_under_qemu[0].write_text(graviton2)
    # HWCAP saying more would change the class: it is not read when cpuinfo answers.
    aarch64_under_qemu[1].write_bytes(auxv((16, 0xECFFFFFB), (26, 0x7F877FFF)))
    info = this_cpu()
    assert (info.isa_class, info.model) == (IsaClass.ARM_DOTPROD, "ARM Neoverse-N1")
