from __future__ import annotations

import numpy as np
import pytest

from tei_ort.package import Activation, Pooling
from tei_ort.runtime import outputs


def test_mean_pool_ignores_padding() -> None:
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # (batch, seq, hidden)
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.int64)
    np.testing.assert_allclose(outputs.pool(hidden, mask, Pooling.MEAN), [[1.0, 2.0], [6.0, 7.0]])
    np.testing.assert_allclose(outputs.pool(hidden, mask, Pooling.CLS), [[0, 1], [6, 7]])
    np.testing.assert_allclose(outputs.pool(hidden, mask, Pooling.LAST_TOKEN), [[2, 3], [6, 7]])


def test_normalize_keeps_zero_rows() -> None:
    got = outputs.normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0]])


def test_classify_sigmoid_for_one_label_softmax_for_several() -> None:
    one = outputs.classify(np.array([[0.0], [2.0]], dtype=np.float32), raw_scores=False)
    np.testing.assert_allclose(one[:, 0], [0.5, 1 / (1 + np.exp(-2.0))], rtol=1e-6)
    several = outputs.classify(np.array([[0.0, np.log(3.0)]], dtype=np.float32), raw_scores=False)
    np.testing.assert_allclose(several, [[0.25, 0.75]], rtol=1e-6)
    raw = outputs.classify(np.array([[1.5, -2.0]], dtype=np.float32), raw_scores=True)
    np.testing.assert_allclose(raw, [[1.5, -2.0]])


def test_gelu_dense_matches_erf_gelu() -> None:
    x = np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)
    got = outputs.dense(x, np.eye(3, dtype=np.float32), None, Activation.GELU)
    np.testing.assert_allclose(got, [[-0.15865526, 0.0, 1.9544997]], rtol=1e-5)


def test_sparse_entries_lists_non_zero_terms() -> None:
    indices, values = outputs.sparse_entries(np.array([0.0, 1.5, 0.0, 0.25], dtype=np.float32))
    assert indices.tolist() == [1, 3]
    np.testing.assert_allclose(values, [1.5, 0.25])


def test_truncate_dimensions_bounds() -> None:
    x = np.ones((1, 4), dtype=np.float32)
    assert outputs.truncate_dimensions(x, None).shape == (1, 4)
    assert outputs.truncate_dimensions(x, 4).shape == (1, 4)
    with pytest.raises(Exception, match="between 1 and 4"):
        outputs.truncate_dimensions(x, 5)


def test_exclude_prompt_zeroes_each_rows_prompt_positions() -> None:
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=np.int64)
    got = outputs.exclude_prompt(mask, np.array([2, 0, 3], dtype=np.int64))
    np.testing.assert_array_equal(got, [[0, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])


def test_pooling_without_the_prompt_as_sentence_transformers() -> None:
    """With the prompt's positions out of the mask: mean over the rest, CLS the first pooled token
    and last-token the last (sentence-transformers 5's Pooling on a 0/1 mask); a row the prompt
    took whole pools to zeros for mean and last-token, and to position 0 for CLS (argmax of a zero
    row), as sentence-transformers."""
    hidden = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)  # (batch, seq, hidden)
    mask = outputs.exclude_prompt(
        np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.int64), np.array([1, 2], dtype=np.int64)
    )
    np.testing.assert_allclose(outputs.pool(hidden, mask, Pooling.MEAN), [[3, 4], [0, 0]])
    np.testing.assert_allclose(outputs.pool(hidden, mask, Pooling.CLS), [[2, 3], [8, 9]])
    np.testing.assert_allclose(outputs.pool(hidden, mask, Pooling.LAST_TOKEN), [[4, 5], [0, 0]])
