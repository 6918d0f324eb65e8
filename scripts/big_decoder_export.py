"""One-off measurement: export a random-weight Qwen3 embedder with a real decoder's config dims
and report each stage's time and peak RSS, the package's files and each variant's validation.

    flock /tmp/bigmem.lock /usr/bin/time -v .venv/bin/python scripts/big_decoder_export.py \
        /tmp/big fp32,fp16 [--dims 0.6b|1.5b] [--layers N] [--max-rss-gb 20]

--dims 0.6b: Qwen3-Embedding-0.6B (hidden 1024, 28 layers, 16 heads, 8 KV heads, intermediate
3072, vocab 151,669: 596M parameters, a 2.4 GB float32 graph, so external data). --dims 1.5b:
gte-Qwen2-1.5B / Qwen2.5-1.5B's sizes in a Qwen3 layout (hidden 1536, 28 layers, 12 heads, 2 KV
heads, intermediate 8960, vocab 151,646: 1.54B parameters, 6.2 GB float32). --layers cuts the
depth for quicker probes of the same stages. A sampler thread reads this process's RSS every
0.1 s; each stage's peak is printed with its time (`peak_rss_gb`), and --max-rss-gb stops the
run (exit 3) when RSS passes it, so that a run that would not fit never drives the shared machine
into swap or the OOM killer.

Measured (2-core Intel Xeon with AMX, shared, 2026-11-30; /usr/bin/time -v): --layers 8
--threshold-bytes 500000000 fp32,fp16 (1.13 GB of weights) peaked at 9.85 GB before the
streamed graph writing, fusion and fp16 conversion (graph_files.save_streamed), 5.21 GB after;
--dims 1.5b fp32 --stop-after fp32 (6.17 GB of weights) at 7.52 GB, 21.8 min; 2026-12-01,
--dims 1.5b default --calibration-texts 32 (every variant tei-export builds for it: fp32, fp16,
int8-wo, bf16; the calibrated int8s skipped over 2 GB) at 9.97 GB, 67.7 min, the int8-wo
quantization step the peak (8.48 GB; 1.06 GB since, on its own). What limits larger models: the
ONNX export, the PyTorch reference and each validation session hold about one copy of the
fp32 weights (~1.4x them in all).

The tokenizer is the tests' 600-token BPE; the embedding table still has the full vocab's rows
(the ids past 600 are never looked up, but the weights are exported, stored and loaded like the
real ones). Not part of the test suite: it takes tens of minutes and several GB of memory."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tei_ort.export import calibration, fuse, pipeline, quantize, variants, weight_only
from tei_ort.export.pipeline import ExportOptions, export_model
from tei_ort.package import Validation, Variant, VariantName
from tests.export import tiny_decoders

DIMS = {
    "0.6b": {  # Qwen/Qwen3-Embedding-0.6B's config.json
        **tiny_decoders.QWEN3_EMBEDDING_0_6B_LAYERS,
        "vocab_size": 151669,
        "tie_word_embeddings": True,
    },
    "1.5b": {  # Alibaba-NLP/gte-Qwen2-1.5B-instruct / Qwen2.5-1.5B's sizes
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "intermediate_size": 8960,
        "vocab_size": 151646,
        "tie_word_embeddings": True,
    },
}
GB = 1e9
SHARD_BYTES = 1_000_000_000


class StopExport(Exception):
    def __init__(self, seconds: dict[str, float]) -> None:
        super().__init__("stopped after the requested stage")
        self.seconds = seconds


class RssSampler:
    """Peak resident memory of this process, per stage (reset at each of the pipeline's laps)."""

    def __init__(self, limit_bytes: float) -> None:
        self.process = psutil.Process()
        self.limit = limit_bytes
        self.stage_peak = 0
        self.step_peak = 0
        self.peak = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = self.process.memory_info().rss
            self.stage_peak, self.peak = max(self.stage_peak, rss), max(self.peak, rss)
            self.step_peak = max(self.step_peak, rss)
            if rss > self.limit:
                print(
                    f"RSS {rss / GB:.2f} GB passed the limit {self.limit / GB:.1f} GB", flush=True
                )
                os._exit(3)
            time.sleep(0.1)

    def take_step(self) -> float:
        peak, self.step_peak = self.step_peak, self.process.memory_info().rss
        return peak / GB

    def take_stage(self) -> float:
        peak, self.stage_peak = self.stage_peak, self.process.memory_info().rss
        return peak / GB


def build(out: Path, dims: dict[str, object]) -> Path:
    """A random checkpoint as transformers initializes one (normal, std 0.02; norms 1), written
    in shards of about 1 GB with their index, one shard in memory at a time."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    tokenizer = tiny_decoders.build_tokenizer(out.with_name(out.name + "-tokenizer"))
    out.mkdir(parents=True)
    for file in tokenizer.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    fields = tiny_decoders.config("qwen3", 600) | dims
    (out / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(0)
    parsed = AutoConfig.for_model(**{k: v for k, v in fields.items() if k != "architectures"})
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModel.from_config(parsed).state_dict().items()}
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    names = list(shapes)
    for i, name in enumerate(names):
        norm = name.endswith("norm.weight")
        shard[name] = torch.ones(shapes[name]) if norm else torch.randn(shapes[name]) * 0.02
        size = sum(t.numel() * 4 for t in shard.values())
        if size > SHARD_BYTES or i == len(names) - 1:
            file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(out / file))
            weight_map |= dict.fromkeys(shard, file)
            shard = {}
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tiny_decoders.write_sentence_transformers(out, hidden=fields["hidden_size"], max_seq_length=512)
    return out


# The steps inside a stage whose peaks are reported apart: (module, function name) -> label.
STEPS = {
    (fuse, "convert_fp16"): "fp16 conversion",
    (weight_only, "quantize_weight_only"): "int8-wo quantization",
    (variants, "_copy_graph"): "fp32 copy",
    (variants.Validator, "check"): "validation",
    (quantize, "quantize_int8"): "int8 quantization",
    (calibration, "calibrate"): "embedding ranges",
}


VALIDATION_FIGURES = ("passed", "cosine_min", "max_abs_diff", "overlap_at_10")


def watch_steps(sampler: RssSampler, steps: dict[str, list[tuple[float, float, float]]]) -> None:
    """Wrap each of STEPS so that its time, RSS at its start and peak RSS are recorded
    (label -> [(s, GB, GB)])."""
    for (owner, name), label in STEPS.items():
        original = getattr(owner, name)

        def timed(*args: Any, _f: Any = original, _label: str = label, **kwargs: Any) -> Any:
            sampler.take_step()
            start, at_start = time.perf_counter(), sampler.process.memory_info().rss / GB
            result = _f(*args, **kwargs)
            seconds, peak = round(time.perf_counter() - start, 1), round(sampler.take_step(), 2)
            steps.setdefault(_label, []).append((seconds, round(at_start, 2), peak))
            figures = (
                f" ({', '.join(f'{f}={getattr(result, f)}' for f in VALIDATION_FIGURES)})"
                if isinstance(result, Validation)
                else ""
            )
            logging.info(
                "step %s: %.1f s, RSS %.2f GB at its start, peak %.2f GB%s",
                _label,
                seconds,
                at_start,
                peak,
                figures,
            )
            return result

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="work folder (source/ and package/ inside)")
    parser.add_argument(
        "variants", help="comma-separated, e.g. fp32,fp16,int8-wo, or default: tei-export's set"
    )
    parser.add_argument("--dims", choices=sorted(DIMS), default="0.6b")
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    parser.add_argument("--max-rss-gb", type=float, default=20.0)
    parser.add_argument(
        "--stop-after",
        default=None,
        help="end the export after this stage (e.g. fp32: calibration runs the same fp32 session "
        "over 512 texts, the longest stage on a big model) and report the stages done",
    )
    parser.add_argument(
        "--threshold-bytes",
        type=int,
        default=pipeline.graph_files.EXTERNAL_DATA_THRESHOLD_BYTES,
        help="external data above this size (lower it to send a cut-down model down that path)",
    )
    parser.add_argument(
        "--calibration-texts",
        type=int,
        default=None,
        help="queries and passages (each) for the embedding-range calibration, the export's "
        f"last stage ({calibration.CALIBRATION_QUERIES} each by default; the same fp32 session "
        "as validation, so the count changes its time, not its memory)",
    )
    args = parser.parse_args()
    if args.calibration_texts is not None:
        calibration.CALIBRATION_QUERIES = calibration.CALIBRATION_PASSAGES = args.calibration_texts
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sampler = RssSampler(args.max_rss_gb * GB)
    peaks: dict[str, float] = {}
    lap = pipeline._Timer.lap

    def lap_with_rss(timer: pipeline._Timer, stage: str) -> None:
        lap(timer, stage)
        peaks[stage] = round(sampler.take_stage(), 2)
        logging.info(
            "stage %s: %.1f s, peak RSS %.2f GB", stage, timer.seconds[stage], peaks[stage]
        )
        if stage == args.stop_after:
            raise StopExport(timer.seconds)

    pipeline._Timer.lap = lap_with_rss  # type: ignore[method-assign]
    steps: dict[str, list[tuple[float, float, float]]] = {}
    watch_steps(sampler, steps)
    dims = DIMS[args.dims] | ({"num_hidden_layers": args.layers} if args.layers else {})
    source = args.folder / "source"
    if not source.is_dir():
        build(source, dims)
    sampler.take_stage()  # building the random checkpoint is not part of the export
    sampler.peak = sampler.stage_peak
    weights = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    chosen = (
        pipeline.ALL_VARIANTS
        if args.variants == "default"
        else tuple(VariantName(v) for v in args.variants.split(","))
    )
    options = ExportOptions(
        variants=chosen,
        validation_queries=16,
        validation_passages=48,
        external_data_threshold_bytes=args.threshold_bytes,
    )
    try:
        result = export_model(str(source), args.folder / "package", options)
    except StopExport as stop:  # the staging folder is discarded, as after any failure
        seconds, sizes, built = stop.seconds, {}, tuple[Variant, ...]()
    else:
        seconds, built = result.seconds, result.manifest.variants
        sizes = {p.name: p.stat().st_size for p in sorted(result.path.iterdir()) if p.is_file()}
    report = {
        "seconds": seconds,
        "peak_rss_gb": peaks,
        "steps_s_gb": steps,
        "weights_gb": round(weights / GB, 3),
        "peak_over_weights": round(sampler.peak / weights, 2),
        "bytes": sizes,
    }
    print(json.dumps(report, indent=2))
    for variant in built:
        print(variant.name.value, variant.data_files, variant.validation)


if __name__ == "__main__":
    main()
