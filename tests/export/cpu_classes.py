"""Which CPU classes a test may hold a class-specific bar on (tei_ort.runtime.cpu.IsaClass).

int8 with 8-bit weights meets its bar where ONNX Runtime's u8s8 GEMMs add in int32 (VNNI, AMX).
On AVX2 and AVX-512 without VNNI, MLAS adds product pairs in saturating int16 (vpmaddubsw), so
int8 may fail its gate there (an AMD Zen 3 scored cosine min 0.99305 on all-MiniLM-L6-v2): the
variant is then recorded as failed and never served, which is what a test may assert there."""

from __future__ import annotations

from tei_ort.runtime.cpu import IsaClass

EXACT_INT8_CLASSES = frozenset(
    {
        IsaClass.X86_AMX,
        IsaClass.X86_AVX512_BF16,
        IsaClass.X86_AVX512_VNNI,
        IsaClass.X86_AVX2_VNNI,
    }
)
