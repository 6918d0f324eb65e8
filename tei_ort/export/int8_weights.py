"""int8 weights for the quantizer (tei_ort.export.quantize): the integer grid, per-column scales
(searched where the grid is coarser than 8 bits), round-to-nearest and GPTQ rounding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]

GPTQ_BLOCK = 128
GPTQ_DAMP = 0.01


@dataclass(frozen=True)
class Grid:
    """The integer weights allowed, |q| <= qmax, and how their scales are picked."""

    qmax: int = 127
    # Per column, the scale is max|w| * shrink / qmax for the shrink (below 1: the largest
    # weights clip) with the least rounding error, weighted by each input channel's mean square.
    shrinks: tuple[float, ...] = (1.0,)


S8 = Grid()


def scales(w: npt.NDArray[Any], weight: npt.NDArray[Any] | None, grid: Grid) -> npt.NDArray[Any]:
    amax = np.maximum(np.abs(w).max(0), 1e-12)
    best = amax / grid.qmax
    if grid.shrinks == (1.0,):
        return best
    rows = np.ones(len(w)) if weight is None else weight
    best_err = np.full(w.shape[1], np.inf)
    for shrink in grid.shrinks:
        scale = amax * shrink / grid.qmax
        q = np.clip(np.round(w / scale), -grid.qmax, grid.qmax)
        err = (rows[:, None] * (w - q * scale) ** 2).sum(0)
        better = err < best_err
        best = np.where(better, scale, best)
        best_err = np.where(better, err, best_err)
    return best


def round_to_nearest(
    w: F32, grid: Grid = S8, weight: npt.NDArray[Any] | None = None
) -> tuple[I8, F32]:
    scale = scales(w, weight, grid)
    q = np.clip(np.round(w / scale), -grid.qmax, grid.qmax)
    return q.astype(np.int8), scale.astype(np.float32)


def gptq(w: F32, x: F32, grid: Grid = S8) -> tuple[I8, F32]:
    """GPTQ (Frantar et al., 2022) on `grid` with fixed per-output-channel scales: input rows
    are rounded one at a time, each rounding error pushed onto the rows not yet rounded through
    the inverse Hessian of the calibration inputs; rows by decreasing Hessian diagonal, errors
    applied lazily per block of rows. Halves the output error of round-to-nearest here."""
    w64 = w.astype(np.float64)
    hess = x.astype(np.float64).T @ x.astype(np.float64)
    dead = np.diag(hess) == 0  # channels never active: any weight works, zero is exact
    hess[dead, dead] = 1.0
    w64[dead] = 0.0
    hess += GPTQ_DAMP * np.mean(np.diag(hess)) * np.eye(len(hess))
    order = np.argsort(-np.diag(hess), kind="stable")
    w64 = w64[order]
    hinv = inverse_cholesky(hess[np.ix_(order, order)])
    qmax = grid.qmax
    scale = scales(w64, np.diag(hess)[order], grid)
    q = np.zeros_like(w64)
    for start in range(0, len(w64), GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, len(w64))
        block = w64[start:end].copy()
        errors = np.zeros_like(block)
        for i in range(end - start):
            k = start + i
            q[k] = np.clip(np.round(block[i] / scale), -qmax, qmax)
            errors[i] = (block[i] - q[k] * scale) / hinv[k, k]
            block[i + 1 :] -= np.outer(hinv[k, k + 1 : end], errors[i])
        w64[end:] -= hinv[start:end, end:].T @ errors
    return q[np.argsort(order)].astype(np.int8), scale.astype(np.float32)


def inverse_cholesky(hess: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The upper Cholesky factor of hess^-1, the GPTQ update's coefficients.

    On one BLAS thread: OpenBLAS's threaded inverse and Cholesky of these small (K, K) matrices
    mostly wait on their threads (MiniLM's int8 + int8-w7 on the shared 2-core Xeon: 69 of 155 s
    wall in them; with one thread the builds took 45 s of CPU time instead of 76, the graphs the
    same byte for byte), and their last bits no longer depend on how many threads OpenBLAS may
    run (its one-thread and threaded paths round differently)."""
    with threadpool_limits(limits=1, user_api="blas"):
        factor: npt.NDArray[np.float64] = np.linalg.cholesky(np.linalg.inv(hess)).T
    return factor
