"""Calibration of int8 / uint8 embedding ranges at export: the package's fp32 graph, run through
the runtime as the server runs it, embeds real text (queries and passages from the offline
corpus), and the per-dimension minimum and maximum of those vectors become
`embedding_ranges.npz` (tei_ort.runtime.quantized_embeddings), what sentence-transformers'
`quantize_embeddings` computes from its `calibration_embeddings`."""

from __future__ import annotations

import logging
from pathlib import Path

from tei_ort.export import corpus
from tei_ort.package import Task, read_manifest
from tei_ort.runtime import Model, RuntimeOptions
from tei_ort.runtime.quantized_embeddings import (
    RANGES_FILE,
    EmbeddingRanges,
    write_ranges,
)

logger = logging.getLogger(__name__)

# 256 of each: a few seconds for MiniLM on two cores; min/max per dimension settle well before.
CALIBRATION_QUERIES = 256
CALIBRATION_PASSAGES = 256


def calibration_texts() -> list[str]:
    return corpus.queries(CALIBRATION_QUERIES) + corpus.passages(CALIBRATION_PASSAGES)


def calibrate(package: Path) -> EmbeddingRanges | None:
    """Writes the package's ranges file; None (and no file) for a model that is not a dense
    embedder. The manifest must already list the fp32 variant."""
    manifest = read_manifest(package)
    if manifest.task is not Task.EMBEDDING:
        (package / RANGES_FILE).unlink(missing_ok=True)  # from an earlier export into this folder
        return None
    # fp32 is what every other variant was judged against; its vectors define the ranges.
    options = RuntimeOptions(provider="cpu", variant="fp32", allow_unvalidated=True)
    model = Model.load(package, options)
    raw = model.embed(calibration_texts(), normalize=False)  # (n, dimensions), unnormalized
    ranges = EmbeddingRanges.calibrate(raw)
    write_ranges(package, ranges)
    logger.info("int8/uint8 ranges calibrated on %d texts -> %s", ranges.texts, RANGES_FILE)
    return ranges
