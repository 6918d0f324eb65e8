"""Which provider and variant to serve on this machine: trusted only where checked, then the
fastest by measurement.

    candidates    (provider, variant) pairs: "auto" walks every CPU-side provider this machine
                  has (OpenVINO, the CPU EP); an explicit --provider / --variant narrows them
    trust         a variant's figures hold for the CPU class and provider they were measured on.
                  Measured elsewhere (another ISA class, or a package from before classes were
                  recorded), it is re-validated here on the package's fidelity set, with the
                  same thresholds, before it may be served (tei_ort.runtime.fidelity_check)
    trial         among the candidates that passed, a short timed run of the same batches (a few
                  seconds; rounds interleaved so that noise hits each alike) picks the fastest
    cache         verdicts and trial figures are kept per package and machine
                  (tei_ort.runtime.checks), so that later starts take none of this
    batching      the chosen variant's batch budget, by a trial too (tei_ort.runtime.trial)

CUDA is outside this: its variants are validated on the CPU EP at export (fp16 on a GPU has no
ISA class), and "auto" serves CUDA whenever a GPU is usable, as before.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tei_ort.errors import BackendError, PackageError, ProviderUnavailable
from tei_ort.package import Manifest, Validation, Variant, VariantName
from tei_ort.runtime import fidelity_check, trial
from tei_ort.runtime.checks import ChecksCache, Verdict
from tei_ort.runtime.cpu import CpuInfo, this_cpu
from tei_ort.runtime.providers import (
    AUTO_ORDER,
    PROVIDERS,
    Provider,
    available,
    engine_name,
    resolve,
)

if TYPE_CHECKING:
    from tei_ort.runtime.model import Model, RuntimeOptions

logger = logging.getLogger(__name__)

OpenModel = Callable[[Provider, Variant], "Model"]


@dataclass(frozen=True)
class Selection:
    provider: Provider
    variant: Variant
    verdicts: tuple[Verdict, ...]
    note: str  # one line for the log and /info: why this variant, on this CPU


def select(
    path: Path, manifest: Manifest, options: RuntimeOptions, open_model: OpenModel
) -> tuple[Selection, Model]:
    """The chosen (provider, variant) and the model loaded on it."""
    cpu = this_cpu()
    candidates = _candidates(manifest, options)
    # Read only if something must be re-validated or timed: not on starts the cache answers.
    fidelity_set = functools.cache(lambda: fidelity_check.read_fidelity_set(path))
    cache = ChecksCache(path, cpu, options.intra_op_threads, options.checks_dir)
    opened: dict[str, Model] = {}
    verdicts = [
        _verdict(provider, variant, cpu, fidelity_set, cache, open_model, opened)
        for provider, variant in candidates
    ]
    passed = [v for v in verdicts if v.passed]
    if not passed:
        raise PackageError(_nothing_servable(manifest, options, cpu, verdicts))
    if len(passed) > 1:
        verdicts = _trial(manifest, verdicts, fidelity_set, cache, open_model, opened)
        passed = [v for v in verdicts if v.passed]
    # Fastest by the trial; without one (a single candidate, or a package with no fidelity set)
    # the providers' order of preference.
    best = max(passed, key=lambda v: v.tokens_per_s or 0.0) if passed[0].tokens_per_s else passed[0]
    cache.save()
    provider = Provider(best.provider)
    variant = manifest.variant(best.variant)
    model = opened.pop(best.label, None) or open_model(provider, variant)
    opened.clear()  # the losers' sessions go now, not at the next collection
    selection = Selection(provider, variant, tuple(verdicts), _note(best, verdicts, cpu))
    logger.info("variant: %s", selection.note)
    return selection, model


def _candidates(manifest: Manifest, options: RuntimeOptions) -> list[tuple[Provider, Variant]]:
    if options.provider == "auto":
        here = available()
        providers: list[Provider] = [p for p in AUTO_ORDER if p in here and p is not Provider.CUDA]
    else:
        providers = [resolve(options.provider)]
    if options.variant is not None:
        # A pinned variant runs on the first provider that prefers it, else on the first one.
        variant = manifest.variant(options.variant)  # PackageError naming what the package has
        preferring = [p for p in providers if variant.name.value in PROVIDERS[p].preferred_variants]
        if variant.name is VariantName.BF16 and not preferring:
            # bf16 has no graph of its own: on any other provider model.onnx would run as fp32
            # and be served under bf16's name.
            raise ProviderUnavailable(
                "variant 'bf16' runs only on OpenVINO, on a CPU with bfloat16 (AMX or "
                f"AVX512_BF16) and the openvino package: not here ({this_cpu().describe()}); "
                "choose another variant"
            )
        return [((preferring or providers)[0], variant)]
    pairs: list[tuple[Provider, Variant]] = []
    for provider in providers:
        for name in PROVIDERS[provider].preferred_variants:
            pairs += [(provider, v) for v in manifest.variants if v.name.value == name]
    if not pairs:
        raise PackageError(
            f"this package has no variant for provider(s) "
            f"{', '.join(p.value for p in providers)} "
            f"(it has {', '.join(v.name.value for v in manifest.variants)})"
        )
    return pairs


def _verdict(
    provider: Provider,
    variant: Variant,
    cpu: CpuInfo,
    fidelity_set: Callable[[], fidelity_check.FidelitySet | None],
    cache: ChecksCache,
    open_model: OpenModel,
    opened: dict[str, Model],
) -> Verdict:
    label = f"{provider.value}:{variant.name.value}"
    cached = cache.get(label)  # kept for this manifest on this machine: checks and trial figures
    if cached is not None:
        return cached
    recorded = variant.validation
    if recorded is not None and _measured_here(recorded, provider, cpu):
        return Verdict(provider.value, variant.name.value, recorded, checked_here=False)
    fidelity = fidelity_set()
    if fidelity is None:
        # A package from before fidelity sets: its figures are all there is.
        note = "not re-checked on this CPU: the package has no fidelity set (re-export it)"
        return Verdict(provider.value, variant.name.value, recorded, False, note=note)
    started = time.perf_counter()
    try:
        model = open_model(provider, variant)
        validation = fidelity_check.validate_here(
            model, fidelity, isa_class=cpu.isa_class.value, engine=engine_name(provider)
        )
    except (PackageError, ProviderUnavailable, BackendError) as exc:
        verdict = Verdict(provider.value, variant.name.value, None, True, note=str(exc))
    else:
        opened[label] = model
        verdict = Verdict(provider.value, variant.name.value, validation, True)
    logger.info(
        "re-validated %s on this CPU (%s) in %.1f s (it was measured on %s): %s",
        label,
        cpu.isa_class.value,
        time.perf_counter() - started,
        (recorded.isa_class or "an unrecorded class") if recorded else "no CPU: never validated",
        _figures(verdict),
    )
    cache.put(verdict)
    return verdict


def _measured_here(validation: Validation, provider: Provider, cpu: CpuInfo) -> bool:
    return validation.isa_class == cpu.isa_class.value and validation.provider == provider.value


def _trial(
    manifest: Manifest,
    verdicts: list[Verdict],
    fidelity_set: Callable[[], fidelity_check.FidelitySet | None],
    cache: ChecksCache,
    open_model: OpenModel,
    opened: dict[str, Model],
) -> list[Verdict]:
    """Time every candidate that passed on the same texts; figures cached for the next start."""
    todo = [v for v in verdicts if v.passed]
    if all(v.tokens_per_s is not None for v in todo):
        return verdicts  # cached from an earlier start on this machine
    fidelity = fidelity_set()
    if fidelity is None:
        return verdicts  # a package from before fidelity sets: the providers' order decides
    plans = {}
    for verdict in todo:
        if verdict.label not in opened:
            opened[verdict.label] = open_model(
                Provider(verdict.provider), manifest.variant(verdict.variant)
            )
        model = opened[verdict.label]
        plans[verdict.label] = (model, trial.candidate_batches(model, fidelity.vset.texts))
    started = time.perf_counter()
    timed, runs = trial.repeated(lambda: trial.fastest(plans), trial.too_close_to_rank, "variants")
    result = []
    for verdict in verdicts:
        if verdict.label in timed:
            verdict = replace(verdict, tokens_per_s=timed[verdict.label])
            cache.put(verdict)
        result.append(verdict)
    logger.info(
        "trial of %d candidates in %.1f s (%s): %s",
        len(timed),
        time.perf_counter() - started,
        "1 run" if runs == 1 else f"{runs} runs",
        ", ".join(f"{label} {tps:,.0f} tok/s" for label, tps in timed.items()),
    )
    return result


def _note(best: Verdict, verdicts: Sequence[Verdict], cpu: CpuInfo) -> str:
    parts = [f"{best.label} on {cpu.describe()}"]
    for verdict in verdicts:
        speed = f" {verdict.tokens_per_s:,.0f} tok/s" if verdict.tokens_per_s else ""
        if verdict.passed:
            where = "re-validation here" if verdict.checked_here else _where(verdict)
            caveat = f"; {verdict.note}" if verdict.note else ""
            parts.append(f"{verdict.label}: passed {where} ({_figures(verdict)}{caveat}){speed}")
        else:
            where = "re-validation here" if verdict.checked_here else _where(verdict)
            parts.append(f"{verdict.label}: not served, failed {where} ({_figures(verdict)})")
    return "; ".join(parts)


def _figures(verdict: Verdict) -> str:
    v = verdict.validation
    if v is None:
        return verdict.note or "not validated"
    if not v.passed:
        return v.note
    figures = [
        f"cosine min {v.cosine_min:.5f}" if v.cosine_min is not None else "",
        f"overlap@10 {v.overlap_at_10:.3f}" if v.overlap_at_10 is not None else "",
        f"max abs diff {v.max_abs_diff:.2g}"
        if v.max_abs_diff is not None and v.cosine_min is None
        else "",
    ]
    return ", ".join(f for f in figures if f) or "passed"


def _where(verdict: Verdict) -> str:
    recorded = verdict.validation.isa_class if verdict.validation else ""
    return f"validation at export on {recorded}" if recorded else "validation on an unknown CPU"


def _nothing_servable(
    manifest: Manifest, options: RuntimeOptions, cpu: CpuInfo, verdicts: Sequence[Verdict]
) -> str:
    details = "; ".join(
        f"{v.label}: {v.validation.note if v.validation else v.note or 'not validated'}"
        for v in verdicts
    )
    what = (
        f"variant {options.variant!r} did not pass validation"
        if options.variant
        else "no variant of this package passed validation"
    )
    return (
        f"{what} on this CPU ({cpu.describe()}): {details}; "
        "choose another variant or provider, or allow unvalidated variants explicitly"
    )
