"""GPTQ's factorization gives the same bits whatever BLAS threading its caller set up, so an int8
graph does not depend on the machine's core count."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from tei_ort.export.int8_weights import inverse_cholesky


def test_inverse_cholesky_is_the_same_on_one_or_several_blas_threads() -> None:
    x = np.random.default_rng(0).standard_normal((1024, 384))
    hess = x.T @ x + np.eye(384)
    with threadpool_limits(limits=1, user_api="blas"):
        one = inverse_cholesky(hess)
    with threadpool_limits(limits=2, user_api="blas"):
        two = inverse_cholesky(hess)
    assert one.tobytes() == two.tobytes()
    # and it is the factor: (U^T U)^-1 = hess, U upper triangular
    assert np.allclose(np.triu(one), one)
    assert np.allclose(np.linalg.inv(one.T @ one), hess, rtol=1e-6)
