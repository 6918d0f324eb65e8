"""How one group's activations are quantized (tei_ort.export.quantize): the candidate plans
(SmoothQuant strength, activation mode, zero point, static scale), their error on the
calibration rows, and the choice among them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tei_ort.export.int8_weights import F32, I8, S8, Grid, round_to_nearest

# Smoothing strengths, zero points and static-range clip ratios tried per layer.
ALPHAS = (0.0, 0.5, 0.75)
STATIC_ALPHAS = (0.5, 0.75, 1.0)
ZERO_POINTS = (128, 96, 64, 32, 16)
CLIPS = (1.0, 0.9, 0.8)
# Activation modes, cheapest at run time first. A cheaper mode is used when the error of its
# worst tokens (99th percentile of per-token relative output error: what the minimum cosine
# feels) stays within this factor of full per-token quantization's.
MODES = ("static", "per-token-max", "per-token")
TOLERANCE = 1.1


@dataclass(frozen=True)
class Plan:
    """How one group's input is quantized."""

    mode: str  # one of MODES
    alpha: float
    smooth: F32  # per input channel; x / smooth is what gets quantized
    zero_point: int
    scale: float = 0.0  # the static scale; per-token scales are computed in the graph
    outliers: tuple[int, ...] = ()  # input channels left to an fp32 MatMul


def smoothing(x: F32, w: F32, alpha: float) -> F32:
    """SmoothQuant: activation channel k is divided by s_k and weight row k multiplied by it,
    s = max|x_k|^alpha / max|w_k|^(1-alpha), normalized to a geometric mean of 1."""
    if alpha == 0.0:
        return np.ones(x.shape[1], np.float32)
    amax = np.maximum(np.abs(x).max(0), 1e-5)
    wmax = np.maximum(np.abs(w).max(1), 1e-5)
    s = amax**alpha / wmax ** (1 - alpha)
    return np.asarray(s / np.exp(np.log(s).mean()), dtype=np.float32)


def fake(x: F32, plan: Plan) -> F32:
    """What the graph computes, in numpy: scale (per row, covering the row's range around the
    fixed zero point, or static), round, saturate, dequantize."""
    return fake_smoothed(x / plan.smooth, plan)


def fake_smoothed(xs: F32, plan: Plan) -> F32:
    """`fake` of x given x / plan.smooth."""
    zp = plan.zero_point
    if plan.mode == "static":
        scale: F32 | float = plan.scale
    else:
        scale = np.maximum(xs.max(1, keepdims=True), 1e-12) / (255 - zp)
        if plan.mode == "per-token":
            scale = np.maximum(scale, -xs.min(1, keepdims=True) / zp)
    q = np.clip(np.round(xs / scale) + zp, 0, 255)
    return np.asarray((q - zp) * scale, dtype=np.float32)


def candidates(x: F32, w: F32, modes: tuple[str, ...]) -> list[Plan]:
    plans = []
    for alpha in dict.fromkeys(ALPHAS + STATIC_ALPHAS):
        smooth = smoothing(x, w, alpha)
        if alpha in ALPHAS:
            dynamic = [m for m in modes if m != "static"]
            plans += [Plan(m, alpha, smooth, zp) for m in dynamic for zp in ZERO_POINTS]
        if alpha in STATIC_ALPHAS and "static" in modes:
            xs = x / smooth
            lo, hi = min(float(xs.min()), 0.0), max(float(xs.max()), 0.0)
            for clip in CLIPS:
                scale = max((hi - lo) * clip / 255, 1e-12)
                zp = int(np.clip(np.round(-lo * clip / scale), 1, 254))
                plans.append(Plan("static", alpha, smooth, zp, scale))
    return plans


def choose(
    x: F32, weights: list[F32], grid: Grid = S8, modes: tuple[str, ...] | None = None
) -> Plan:
    """Per mode, the plan with the lowest output error (judged with round-to-nearest weights:
    GPTQ lowers every candidate's error alike, at 20x the cost); then the cheapest mode whose
    worst tokens fare about as well as with full per-token quantization."""
    modes = modes or MODES
    sample = x[::2]
    w = np.concatenate(weights, 1)
    ref = sample @ w
    ref_norms = np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    best: dict[str, tuple[float, float, Plan]] = {}
    deq: dict[float, F32] = {}
    smoothed: dict[float, F32] = {}  # sample / smooth: the same for every plan of one alpha
    for plan in candidates(x, w, modes):
        if plan.alpha not in deq:
            xs = smoothed[plan.alpha] = sample / plan.smooth
            q, s = round_to_nearest(w * plan.smooth[:, None], grid, (xs * xs).mean(0))
            deq[plan.alpha] = q.astype(np.float32) * s
        diff = fake_smoothed(smoothed[plan.alpha], plan) @ deq[plan.alpha] - ref
        err = float(np.linalg.norm(diff))
        if plan.mode not in best or err < best[plan.mode][0]:
            tail = float(np.percentile(np.linalg.norm(diff, axis=1) / ref_norms, 99))
            best[plan.mode] = (err, tail, plan)
    limit = TOLERANCE * best[modes[-1]][1]
    return next(best[m][2] for m in modes if best[m][1] <= limit)


def error(x: F32, w: F32, plan: Plan, wq: I8, ws: F32, full: F32) -> float:
    """Error of the int8 part (x, w without the outlier channels, whose fp32 product is exact)
    relative to the whole output `full`."""
    out = fake(x, plan) @ (wq.astype(np.float32) * ws)
    return float(np.linalg.norm(out - x @ w) / max(float(np.linalg.norm(full)), 1e-12))
