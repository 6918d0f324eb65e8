"""`tei-export`: convert a hub model or local folder into a validated model package, or run the CI
model-validation pipeline over a list of models.

    tei-export sentence-transformers/all-MiniLM-L6-v2 -o packages/minilm --variants fp32,int8
    tei-export validate --models ./models/minilm,./models/splade --out /tmp/validation
    tei-export validate --models offline   # the models that install from PyPI
    tei-export verify packages/minilm        # every file against the manifest's sha256
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tei_ort import __version__, integrity
from tei_ort.errors import TeiOrtError
from tei_ort.export import offline_models
from tei_ort.export.pipeline import (
    ALL_VARIANTS,
    DEFAULT_VARIANTS,
    ExportOptions,
    ExportResult,
    HubOptions,
    export_model,
)
from tei_ort.export.report import format_table, rows_for
from tei_ort.package import Pooling, Task, VariantName

logger = logging.getLogger(__name__)

# --pooling values: ours and TEI's ("last-token").
POOLING_CHOICES: dict[str, Pooling] = {p.value: p for p in Pooling} | {
    "last-token": Pooling.LAST_TOKEN
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["verify"]:
        return _run_verify(_verify_parser().parse_args(args[1:]))
    if args[:1] == ["validate"]:
        parsed = _validate_parser().parse_args(args[1:])
        _configure_logging(parsed.log_level)
        return _run_validate(parsed)
    parsed = _export_parser().parse_args(args)
    _configure_logging(parsed.log_level)
    try:
        result = export_model(parsed.model, parsed.output, _options(parsed), _hub(parsed))
    except TeiOrtError as exc:
        logger.error("%s", exc)
        return 2
    print(format_table(rows_for(parsed.model, result)))
    fp32 = result.manifest.variant(VariantName.FP32)
    return 0 if fp32.is_servable else 1


def _run_verify(parsed: argparse.Namespace) -> int:
    """0 when every file of the package matches the manifest; 1 (and the file named) otherwise,
    or when the manifest has no digests to check against."""
    try:
        report = integrity.verify(parsed.package)
    except TeiOrtError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    if report.files == 0:
        print(f"{parsed.package}: {report.describe()}", file=sys.stderr)
        return 1
    print(f"{parsed.package}: OK, {report.describe()}")
    return 0


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tei-export verify",
        description="Check every file of a model package against the sizes and sha256 digests "
        "its manifest lists (what tei-serve checks at load, without its cache).",
    )
    parser.add_argument("package", type=Path, help="model package folder")
    return parser


def _run_validate(parsed: argparse.Namespace) -> int:
    """Export and validate each model; the table lists every variant; exit 1 when any fp32 fails
    (a failed fp16/int8 is recorded in its package and not served, which is not a CI failure)."""
    try:
        models = offline_models.expand([m.strip() for m in parsed.models.split(",") if m.strip()])
    except TeiOrtError as exc:
        logger.error("%s", exc)
        return 1
    with tempfile.TemporaryDirectory(prefix="tei-validate-") as tmp:
        root = parsed.out or Path(tmp)
        rows = []
        failed = False
        for index, (name, model) in enumerate(models):
            out = root / package_folder(index, name)
            try:
                options = offline_models.options_for(name, _options(parsed))
                result: ExportResult = export_model(model, out, options, _hub(parsed))
            except TeiOrtError as exc:
                logger.error("%s: %s", name, exc)
                rows.append((name, "-", "-", "-", "-", "-", "-", f"error: {exc}"))
                failed = True
                continue
            rows += rows_for(name, result)
            failed |= not result.manifest.variant(VariantName.FP32).is_servable
        print(format_table(rows))
    return 1 if failed else 0


def _common(parser: argparse.ArgumentParser, variants: Sequence[VariantName]) -> None:
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--token", help="hub token (default: huggingface_hub's own lookup)")
    parser.add_argument("--cache-dir", type=Path, help="huggingface_hub cache folder")
    parser.add_argument(
        "--task", choices=[t.value for t in Task], help="override the detected task"
    )
    parser.add_argument(
        "--pooling",
        choices=sorted(POOLING_CHOICES),
        help="override the sentence-transformers pooling (required for a plain encoder); "
        "TEI's spellings: splade means --task sparse_embedding",
    )
    parser.add_argument(
        "--variants",
        default=",".join(v.value for v in variants),
        help="comma-separated subset of fp32,fp16,int8,int8-w7,int8-u8,int8-wo,bf16 (fp32 is always built; int8-w7: 7-bit weights, exact on every CPU; int8-u8: int8's weights stored as uint8, exact at 8 bits on every CPU, built only when asked for (validate: always); int8-wo: int8 weights only, decoders; bf16: validated where OpenVINO runs bfloat16 natively (AMX, AVX512_BF16), elsewhere listed unvalidated for tei-serve to validate on such a CPU)",
    )
    parser.add_argument("--opset", type=int, default=ExportOptions().opset)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--version", action="version", version=f"tei-export {__version__}")


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tei-export",
        description="Export a model to a validated ONNX model package "
        "(or `tei-export validate --models ...` for the CI pipeline, "
        "`tei-export verify PACKAGE` to check a package's files).",
    )
    parser.add_argument(
        "model", help="hub repo id or local Hugging Face / sentence-transformers folder"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="package folder to write")
    _common(parser, DEFAULT_VARIANTS)
    return parser


def _validate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tei-export validate",
        description="Export and validate a list of models; print a table; exit 1 if any fp32 fails.",
    )
    parser.add_argument(
        "--models",
        required=True,
        help="comma-separated hub ids, folders or offline model names ('offline' = all of: "
        + ", ".join(offline_models.OFFLINE_MODELS)
        + ")",
    )
    parser.add_argument("--out", type=Path, help="keep the packages here (default: a temp folder)")
    _common(parser, ALL_VARIANTS)  # CI checks every variant
    return parser


def _options(parsed: argparse.Namespace) -> ExportOptions:
    try:
        variants = tuple(VariantName(v.strip()) for v in parsed.variants.split(",") if v.strip())
    except ValueError as exc:
        raise SystemExit(f"tei-export: --variants: {exc}") from exc
    pooling = POOLING_CHOICES[parsed.pooling] if parsed.pooling else None
    task = Task(parsed.task) if parsed.task else None
    if pooling is Pooling.SPLADE:  # TEI's `--pooling splade` selects the SPLADE task
        task, pooling = task or Task.SPARSE_EMBEDDING, None
    return ExportOptions(
        task=task,
        pooling=pooling,
        variants=variants,
        opset=parsed.opset,
    )


def _hub(parsed: argparse.Namespace) -> HubOptions:
    return HubOptions(revision=parsed.revision, token=parsed.token, cache_dir=parsed.cache_dir)


def package_folder(index: int, model: str) -> str:
    """The folder, under `--out`, of the index-th model of `tei-export validate`."""
    return f"{index:02d}-{_slug(model)}"


def _slug(model: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model.strip("/"))[-60:]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Our own progress at the chosen level; torch/optimum/ORT chatter stays at WARNING.
    logging.getLogger("tei_ort").setLevel(level.upper())


if __name__ == "__main__":
    sys.exit(main())
