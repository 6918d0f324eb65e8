"""Pad a list of encodings into the graph's (batch, seq) int64 inputs, right padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tei_ort.tokenization import Encoded

Feeds = dict[str, npt.NDArray[np.int64]]


def pad(
    encodings: Sequence[Encoded],
    pad_token_id: int,
    with_token_type_ids: bool,
    *,
    multiple: int = 1,
    limit: int | None = None,
    rows: int | None = None,
) -> Feeds:
    """`multiple` rounds the padded length up (never past `limit`, the model's max input length,
    unless an input is longer): fewer distinct shapes for runtimes that compile per shape.
    `rows` (>= len(encodings)) adds filler rows, each one pad token with its mask set (a row
    with no token attended to can give NaN in fused attention); their outputs are discarded."""
    batch = max(len(encodings), rows or 0)
    longest = max(len(e) for e in encodings)
    max_len = -(-longest // multiple) * multiple
    if limit is not None:
        max_len = max(longest, min(max_len, limit))
    input_ids = np.full((batch, max_len), pad_token_id, dtype=np.int64)  # (batch, seq)
    attention_mask = np.zeros((batch, max_len), dtype=np.int64)  # (batch, seq)
    token_type_ids = np.zeros((batch, max_len), dtype=np.int64)  # (batch, seq)
    for row, encoding in enumerate(encodings):
        n = len(encoding)
        input_ids[row, :n] = encoding.ids
        attention_mask[row, :n] = 1
        token_type_ids[row, :n] = encoding.type_ids
    attention_mask[len(encodings) :, 0] = 1  # filler rows: one pad token each
    feeds: Feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_token_type_ids:
        feeds["token_type_ids"] = token_type_ids
    return feeds
