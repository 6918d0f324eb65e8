"""Calibration statistics for int8 quantization (tei_ort.export.quantize): the calibration feeds
with their short cuts, each group's input rows on the real tokens, and the outlier channels
among them."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper

from tei_ort.export.int8_weights import F32

Feed = Mapping[str, npt.NDArray[Any]]

MAX_ROWS = 2048  # calibration tokens kept per layer: enough for a 1536-wide Hessian
# Calibration adds, per text, copies cut to this many tokens between its first and last
# token ("[CLS] thanks [SEP]"): real queries of one to three tokens, whose rows are mostly [CLS]
# and [SEP], are what int8 gets wrong first (issue 9), and prose has none.
SHORT_LENGTHS = (1, 2, 3)
# Outlier input channels (LLM.int8(), Dettmers et al., 2022) stay fp32: a channel whose largest
# calibration |x| exceeds a multiple of the median channel's (quantize's scheme per weight bits).
# In BERT a few fixed channels reach 10-20x the rest on [CLS] / [SEP] rows only (MiniLM's layer 0
# FFN output: channel 856 at 24.6 against a median of 1.3); a per-token scale covering them
# leaves the rest of those rows one or two steps, and a 1-3-token text's embedding is two thirds
# [CLS] and [SEP].
MAX_OUTLIERS = 16
# Rows kept for the next quantization of the same graph only up to this size (MiniLM's: 130 MB).
MAX_SHARED_BYTES = 1 << 30


def short_texts(
    calibration: Sequence[Feed],
) -> list[dict[str, npt.NDArray[Any]]]:
    """Per length in SHORT_LENGTHS, one feed of every calibration text cut to its first token,
    that many next ones and its last real token (right-padded feeds; every (batch, seq) input is
    cut alike: ids, token types, positions)."""
    feeds: list[dict[str, npt.NDArray[Any]]] = []
    for feed in calibration:
        mask = feed["attention_mask"].astype(bool)  # (batch, seq)
        lengths = mask.sum(1)
        for body in SHORT_LENGTHS:
            long_enough = np.flatnonzero(lengths >= body + 2)
            if not len(long_enough):
                continue
            # (rows, body + 2): first token, `body` tokens, last real token
            keep = np.concatenate(
                [
                    np.tile(np.arange(body + 1), (len(long_enough), 1)),
                    lengths[long_enough, None] - 1,
                ],
                axis=1,
            )
            feeds.append(
                {
                    name: np.take_along_axis(value[long_enough], keep, axis=1)
                    if value.shape == mask.shape
                    else value
                    for name, value in feed.items()
                }
            )
    return feeds


@dataclass
class _SharedRows:
    key: str
    rows: dict[str, F32]
    readers: set[int] = field(default_factory=set)  # the weight bits that have used them


_shared: _SharedRows | None = None
_shared_lock = threading.Lock()


def shared_rows(
    graph_file: Path,
    model: onnx.ModelProto,
    tensors: list[str],
    calibration: Sequence[Feed],
    weight_bits: int,
    all_bits: frozenset[int],
) -> dict[str, F32]:
    """`calibration_rows` of `graph_file` (read as `model`); remembered for the next call on the same graph and feeds, which the export
    pipeline makes (int8, then int8-w7 from the same fp32 graph and calibration): the forward
    passes and the sampling are the same for every weight width. Forgotten once every width in
    `all_bits` has read them. The arrays are read-only: every caller sees the same rows."""
    global _shared
    key = _rows_key(graph_file, tensors, calibration)
    with _shared_lock:
        entry = _shared if _shared is not None and _shared.key == key else None
        if entry is None:
            rows = calibration_rows(model, tensors, calibration)
            for array in rows.values():
                array.flags.writeable = False
            entry = _SharedRows(key, rows)
            fits = sum(a.nbytes for a in rows.values()) <= MAX_SHARED_BYTES
            _shared = entry if fits else None
        entry.readers.add(weight_bits)
        if _shared is entry and entry.readers >= all_bits:
            _shared = None
        return entry.rows


def _rows_key(graph_file: Path, tensors: list[str], calibration: Sequence[Feed]) -> str:
    """What the rows depend on: the graph's bytes (and its external data file's size and time),
    the tensors probed, the feeds (short cuts included) and the rows kept per tensor."""
    digest = hashlib.sha256(graph_file.read_bytes())
    data = graph_file.with_name(graph_file.name + ".data")
    if data.is_file():
        stat = data.stat()
        digest.update(f"data {stat.st_size} {stat.st_mtime_ns}".encode())
    digest.update(repr((tensors, MAX_ROWS)).encode())
    for feed in calibration:
        for name in sorted(feed):
            value = np.ascontiguousarray(feed[name])
            digest.update(f"{name} {value.dtype} {value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def calibration_rows(
    model: onnx.ModelProto,
    tensors: list[str],
    calibration: Sequence[Feed],
) -> dict[str, F32]:
    """Each group's input on the real (unmasked) tokens, subsampled to about MAX_ROWS rows.
    A token is drawn with weight 1/(its text's length), as mean pooling weighs it: a 5-token
    text's [CLS] and [SEP] rows (outliers in BERT) move its embedding far more than one token
    of a long passage does, and uniform sampling all but ignores them."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = list(dict.fromkeys(tensors))
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        for t in wanted
        if t not in known
    )
    options = ort.SessionOptions()
    # Basic optimizations only: the extended fusions would swallow the tensors we probe.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inputs = {i.name for i in session.get_inputs()}
    quota = -(-MAX_ROWS // len(calibration))
    rng = np.random.default_rng(0)
    found: dict[str, list[F32]] = {t: [] for t in wanted}
    for feed in calibration:
        outs = session.run(wanted, {k: v for k, v in feed.items() if k in inputs})
        mask = feed["attention_mask"].astype(bool)
        lengths = np.maximum(mask.sum(1), 1)
        for name, out in zip(wanted, outs, strict=True):
            arr = np.asarray(out, dtype=np.float32)
            if arr.shape[:2] == mask.shape:
                real = arr[mask]
                weight = np.repeat(1.0 / lengths, mask.sum(1))
            else:
                real = arr.reshape(-1, arr.shape[-1])
                weight = np.ones(len(real))
            if len(real) > quota:
                real = real[rng.choice(len(real), quota, replace=False, p=weight / weight.sum())]
            found[name].append(real)
    return {name: np.concatenate(parts) for name, parts in found.items()}


def outliers(x: F32, ratio: float) -> tuple[int, ...]:
    """Input channels far above the others (at most MAX_OUTLIERS, largest first)."""
    amax = np.abs(x).max(0)  # (K,)
    order = np.argsort(-amax, kind="stable")[:MAX_OUTLIERS]
    bar = ratio * float(np.median(amax))
    return tuple(int(k) for k in order if amax[k] > bar)


def without(a: F32, channels: tuple[int, ...], axis: int) -> F32:
    if not channels:
        return a
    out = a.copy()
    index: list[Any] = [slice(None), slice(None)]
    index[axis] = list(channels)
    out[tuple(index)] = 0.0
    return out
