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
    cache         verdicts and trial figures are kept per package and machine (checks.json in the
                  package, else in RuntimeOptions.checks_dir), so that later starts take none of this

CUDA is outside this: its variants are validated on the CPU EP at export (fp16 on a GPU has no
ISA class), and "auto" serves CUDA whenever a GPU is usable, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tei_ort.errors import BackendError, PackageError, ProviderUnavailable
from tei_ort.package import MANIFEST_FILE, Manifest, Validation, Variant
from tei_ort.runtime import fidelity_check
from tei_ort.runtime.cpu import CpuInfo, this_cpu
from tei_ort.runtime.providers import AUTO_ORDER, PROVIDERS, Provider, available, engine_name

if TYPE_CHECKING:
    from tei_ort.runtime.model import Model, RuntimeOptions

logger = logging.getLogger(__name__)

CHECKS_FILE = "checks.json"
CHECKS_VERSION = 1
TRIAL_ROUNDS = 3
TRIAL_BATCHES = 2  # of the provider's target batch tokens, longest texts of the fidelity set
TRIAL_BUDGET_S = 6.0  # rounds stop early past this (large models on small CPUs)
# Padded tokens per forward batch tried for the chosen variant. Which is fastest differs per
# provider and class: on an AMX Xeon (MiniLM, scripts/batch_tokens_study.py) ORT int8 peaked at
# 1,024, OpenVINO bf16 at 4,096 and fp32 was flat. Larger batches also make a small request
# behind a bulk one wait longer, so a budget within 5% of the fastest counts as fast and the
# smallest of those wins.
BATCH_BUDGETS = (512, 1024, 2048, 4096)
BUDGET_TIE = 0.05

OpenModel = Callable[[Provider, Variant], "Model"]


@dataclass(frozen=True)
class Verdict:
    """One candidate on this machine: the figures that decide, and its trial speed."""

    provider: str
    variant: str
    validation: Validation | None  # None: it could not be loaded here (see note)
    checked_here: bool  # re-validated on this machine (else: the manifest's own figures)
    tokens_per_s: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.variant}"


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
    fidelity_set = fidelity_check.read_fidelity_set(path)
    cache = _Cache(path, cpu, options.intra_op_threads, options.checks_dir)
    opened: dict[str, Model] = {}
    verdicts = [
        _verdict(provider, variant, cpu, fidelity_set, cache, open_model, opened)
        for provider, variant in candidates
    ]
    passed = [v for v in verdicts if v.passed]
    if not passed:
        raise PackageError(_nothing_servable(manifest, options, cpu, verdicts))
    if len(passed) > 1 and fidelity_set is not None:
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


def batch_tokens(model: Model, options: RuntimeOptions) -> tuple[int | None, str]:
    """The padded tokens per forward batch the server aims for with this model here: the
    provider's default where it has none or the package has no fidelity set, else the fastest
    of BATCH_BUDGETS in a short trial on the fidelity set's texts (cached like the checks)."""
    default = PROVIDERS[model.provider].target_batch_tokens
    fidelity_set = fidelity_check.read_fidelity_set(model.path)
    if default is None or fidelity_set is None:
        return default, f"{default or 'no'} target batch tokens (the provider's default)"
    label = f"{model.provider.value}:{model.variant.name.value}"
    cache = _Cache(model.path, this_cpu(), options.intra_op_threads, options.checks_dir)
    rates = cache.get_budgets(label)
    if rates is None:
        rates = _budget_trial(model, fidelity_set.vset.texts[::3])
        cache.put_budgets(label, rates)
        cache.save()
    fastest = max(rates.values())
    chosen = min(b for b, rate in rates.items() if rate >= fastest * (1 - BUDGET_TIE))
    figures = ", ".join(f"{b}: {rate:,.0f} tok/s" for b, rate in sorted(rates.items()))
    return chosen, f"{chosen} target batch tokens, by trial ({figures})"


def _budget_trial(model: Model, texts: Sequence[str]) -> dict[int, float]:
    encodings = sorted(model.encode(list(texts)), key=len)
    tokens = sum(len(e) for e in encodings)
    plans = {budget: _budget_batches(encodings, budget) for budget in BATCH_BUDGETS}
    best: dict[int, float] = {}
    started = time.perf_counter()
    for _ in range(TRIAL_ROUNDS):
        for budget, batches in plans.items():
            model.forward(batches[-1])  # its longest shape, warm
            tick = time.perf_counter()
            for batch in batches:
                model.forward(batch)
            best[budget] = min(best.get(budget, float("inf")), time.perf_counter() - tick)
        if time.perf_counter() - started > TRIAL_BUDGET_S:
            break
    return {budget: round(tokens / seconds, 1) for budget, seconds in best.items()}


def _budget_batches(encodings: Sequence[Any], budget: int) -> list[list[Any]]:
    """Length-sorted encodings in batches of at most `budget` padded tokens."""
    batches: list[list[Any]] = [[]]
    for encoding in encodings:  # ascending: the newest is the longest of its batch
        if batches[-1] and len(encoding) * (len(batches[-1]) + 1) > budget:
            batches.append([])
        batches[-1].append(encoding)
    return batches


def _candidates(manifest: Manifest, options: RuntimeOptions) -> list[tuple[Provider, Variant]]:
    from tei_ort.runtime.providers import resolve

    chosen = resolve(options.provider)
    if options.provider == "auto":
        here = available()
        providers: list[Provider] = [p for p in AUTO_ORDER if p in here and p is not Provider.CUDA]
    else:
        providers = [chosen]
    if options.variant is not None:
        # A pinned variant runs on the first provider that prefers it (auto), or where asked.
        variant = manifest.variant(options.variant)  # PackageError naming what the package has
        preferring = [p for p in providers if variant.name.value in PROVIDERS[p].preferred_variants]
        return [((preferring or providers)[0] if len(providers) > 1 else chosen, variant)]
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
    fidelity_set: fidelity_check.FidelitySet | None,
    cache: _Cache,
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
    if fidelity_set is None:
        # A package from before fidelity sets: its figures are all there is.
        note = "not re-checked on this CPU: the package has no fidelity set (re-export it)"
        return Verdict(provider.value, variant.name.value, recorded, False, note=note)
    started = time.perf_counter()
    try:
        model = open_model(provider, variant)
        validation = fidelity_check.validate_here(
            model, fidelity_set, isa_class=cpu.isa_class.value, engine=engine_name(provider)
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
        (recorded.isa_class or "an unrecorded class") if recorded else "nothing",
        _figures(verdict),
    )
    cache.put(verdict)
    return verdict


def _measured_here(validation: Validation, provider: Provider, cpu: CpuInfo) -> bool:
    return validation.isa_class == cpu.isa_class.value and validation.provider == provider.value


def _trial(
    manifest: Manifest,
    verdicts: list[Verdict],
    fidelity_set: fidelity_check.FidelitySet,
    cache: _Cache,
    open_model: OpenModel,
    opened: dict[str, Model],
) -> list[Verdict]:
    """Time the same batches on every candidate that passed, in interleaved rounds, keeping each
    one's fastest round; figures cached for the next start."""
    todo = [v for v in verdicts if v.passed]
    if all(v.tokens_per_s is not None for v in todo):
        return verdicts  # cached from an earlier start on this machine
    models = {}
    for verdict in todo:
        if verdict.label not in opened:
            opened[verdict.label] = open_model(
                Provider(verdict.provider), manifest.variant(verdict.variant)
            )
        models[verdict.label] = opened[verdict.label]
    texts = sorted(fidelity_set.vset.texts, key=len, reverse=True)
    best: dict[str, float] = {}
    tokens: dict[str, int] = {}
    started = time.perf_counter()
    for _ in range(TRIAL_ROUNDS):
        for label, model in models.items():
            batches = _trial_batches(model, texts)
            model.forward(batches[-1])  # warm: first runs of a shape allocate and compile
            tick = time.perf_counter()
            for batch in batches:
                model.forward(batch)
            seconds = time.perf_counter() - tick
            best[label] = min(best.get(label, seconds), seconds)
            tokens[label] = sum(len(e) for batch in batches for e in batch)
        if time.perf_counter() - started > TRIAL_BUDGET_S:
            break
    timed = {label: tokens[label] / best[label] for label in best}
    result = []
    for verdict in verdicts:
        if verdict.label in timed:
            verdict = replace(verdict, tokens_per_s=round(timed[verdict.label], 1))
            cache.put(verdict)
        result.append(verdict)
    logger.info(
        "trial of %d candidates in %.1f s: %s",
        len(timed),
        time.perf_counter() - started,
        ", ".join(f"{label} {tps:,.0f} tok/s" for label, tps in timed.items()),
    )
    return result


def _trial_batches(model: Model, texts: Sequence[str]) -> list[list[Any]]:
    """TRIAL_BATCHES batches of the longest texts, each as many as fit the provider's target
    padded tokens (what the server's batcher forms under load)."""
    budget = PROVIDERS[model.provider].target_batch_tokens or 8192
    encodings = model.encode(list(texts))
    batches: list[list[Any]] = [[]]
    for encoding in encodings:
        batch = batches[-1]
        longest = max([len(encoding), *(len(e) for e in batch)])
        if batch and longest * (len(batch) + 1) > budget:
            if len(batches) == TRIAL_BATCHES:
                break
            batches.append([])
        batches[-1].append(encoding)
    return [b for b in batches if b]


def _note(best: Verdict, verdicts: Sequence[Verdict], cpu: CpuInfo) -> str:
    parts = [f"{best.label} on {cpu.describe()}"]
    for verdict in verdicts:
        speed = f" {verdict.tokens_per_s:,.0f} tok/s" if verdict.tokens_per_s else ""
        if verdict.passed:
            where = "re-validated here" if verdict.checked_here else _where(verdict)
            caveat = f"; {verdict.note}" if verdict.note else ""
            parts.append(f"{verdict.label}: passed {where} ({_figures(verdict)}{caveat}){speed}")
        else:
            where = "here" if verdict.checked_here else _where(verdict)
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
    return f"validated at export on {recorded}" if recorded else "validated on an unknown CPU"


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


class _Cache:
    """checks.json: {"version", "machines": {machine key: {"manifest": sha256,
    "verdicts": {"cpu:int8": {...}}}}}. Kept in the package when it is writable, else in
    `fallback_dir` by the manifest's digest; a damaged file is ignored."""

    def __init__(
        self, package: Path, cpu: CpuInfo, threads: int | None, fallback_dir: Path | None
    ) -> None:
        self._digest = hashlib.sha256((package / MANIFEST_FILE).read_bytes()).hexdigest()
        engines = ", ".join(engine_name(p) for p in sorted(available(), key=lambda p: p.value))
        self._key = (
            f"{cpu.describe()} | {cpu.cores} cores | threads {threads or 'default'} | {engines}"
        )
        self._paths = [package / CHECKS_FILE]
        if fallback_dir is not None:
            self._paths.append(fallback_dir / f"{self._digest[:32]}.json")
        self._data = self._load()
        entry = self._data["machines"].get(self._key, {})
        if entry.get("manifest") != self._digest:
            entry = {"manifest": self._digest, "verdicts": {}}
        self._data["machines"][self._key] = entry
        self._entry: dict[str, Any] = entry
        self._verdicts: dict[str, Any] = entry["verdicts"]
        self._dirty = False

    def get(self, label: str) -> Verdict | None:
        raw = self._verdicts.get(label)
        if not isinstance(raw, dict):
            return None
        try:
            validation = Validation(**raw["validation"]) if raw.get("validation") else None
            return Verdict(**{**raw, "validation": validation})
        except TypeError:
            return None

    def put(self, verdict: Verdict) -> None:
        self._verdicts[verdict.label] = asdict(verdict)
        self._dirty = True

    def get_budgets(self, label: str) -> dict[int, float] | None:
        section = self._entry.get("batch_tokens")
        raw = section.get(label) if isinstance(section, dict) else None
        if not isinstance(raw, dict) or not raw:
            return None
        try:
            return {int(budget): float(rate) for budget, rate in raw.items()}
        except (TypeError, ValueError):
            return None

    def put_budgets(self, label: str, rates: dict[int, float]) -> None:
        self._entry.setdefault("batch_tokens", {})[label] = {str(b): r for b, r in rates.items()}
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        text = json.dumps(self._data, indent=2, sort_keys=True)
        for path in self._paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)
                return
            except OSError:
                continue
        logger.warning("could not cache the variant checks (no writable place); they run again")

    def _load(self) -> dict[str, Any]:
        for path in self._paths:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if (
                isinstance(data, dict)
                and data.get("version") == CHECKS_VERSION
                and isinstance(data.get("machines"), dict)
            ):
                return data
        return {"version": CHECKS_VERSION, "machines": {}}
