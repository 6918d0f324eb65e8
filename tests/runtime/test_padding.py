"""Right padding into the graph's inputs, and rounding the padded length up for runtimes that
compile per shape."""

from __future__ import annotations

import numpy as np

from tei_ort.runtime.padding import pad
from tei_ort.tokenization import Encoded


def enc(ids: list[int]) -> Encoded:
    return Encoded(np.array(ids, dtype=np.int64), np.zeros(len(ids), dtype=np.int64))


def test_right_padding_with_mask_and_type_ids() -> None:
    feeds = pad([enc([5, 6, 7]), enc([8])], pad_token_id=1, with_token_type_ids=True)
    np.testing.assert_array_equal(feeds["input_ids"], [[5, 6, 7], [8, 1, 1]])
    np.testing.assert_array_equal(feeds["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    assert feeds["token_type_ids"].shape == (2, 3)
    assert "token_type_ids" not in pad([enc([5])], 0, with_token_type_ids=False)


def test_length_rounds_up_to_the_multiple_within_the_limit() -> None:
    feeds = pad([enc([5] * 17), enc([6] * 3)], 0, False, multiple=16, limit=256)
    assert feeds["input_ids"].shape == (2, 32)
    np.testing.assert_array_equal(feeds["attention_mask"].sum(axis=1), [17, 3])
    # Never past the model's limit ...
    assert pad([enc([5] * 250)], 0, False, multiple=16, limit=256)["input_ids"].shape == (1, 256)
    assert pad([enc([5] * 250)], 0, False, multiple=16, limit=250)["input_ids"].shape == (1, 250)
    # ... nor shorter than the longest input (token ids given past the limit are kept).
    assert pad([enc([5] * 300)], 0, False, multiple=16, limit=256)["input_ids"].shape == (1, 300)
    assert pad([enc([5] * 32)], 0, False, multiple=16)["input_ids"].shape == (1, 32)
