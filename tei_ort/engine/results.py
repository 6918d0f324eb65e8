"""A forward's raw outputs -> what a request returns. `row`, `copy` and `sparse` run in the forward
thread, once per input; the rest on the event loop, once per request, in numpy."""

from __future__ import annotations

import time

import numpy as np

from tei_ort.engine.backend import FloatArray
from tei_ort.engine.batch_types import GroupTiming
from tei_ort.engine.inputs import Encodings
from tei_ort.engine.types import Metadata, SparseVector
from tei_ort.errors import BackendError
from tei_ort.runtime import outputs


def row(row: FloatArray) -> FloatArray:
    return row  # a view of the batch's (batch, dims) output; np.stack copies it per request


def copy(tokens: FloatArray) -> FloatArray:
    return np.array(tokens)  # (len, hidden), copied so the (batch, seq, hidden) output is freed


def sparse(row: FloatArray) -> SparseVector:
    return SparseVector(*outputs.sparse_entries(row))


def check_scores(scores: FloatArray) -> None:
    if np.isnan(scores).any():
        raise BackendError("the model returned NaN scores")


def metadata(encoded: Encodings, timing: GroupTiming, started: float) -> Metadata:
    return Metadata(
        compute_characters=encoded.characters,
        compute_tokens=encoded.tokens,
        tokenization_s=encoded.seconds,
        queue_s=timing.queue_s,
        inference_s=timing.inference_s,
        total_s=time.perf_counter() - started,
        input_tokens=tuple(len(e) for e in encoded.encodings),
    )
