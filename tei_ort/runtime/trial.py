"""Timed trials on this machine: which candidate variant is fastest, and at which batch budget.
The same batches run on each contender in interleaved rounds, so that a noisy neighbour slows
each alike, and each contender's fastest round counts. Seconds at first start; the figures are
cached by tei_ort.runtime.checks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from tei_ort.runtime import fidelity_check
from tei_ort.runtime.checks import ChecksCache
from tei_ort.runtime.cpu import this_cpu
from tei_ort.runtime.providers import PROVIDERS
from tei_ort.tokenization import Encoded

if TYPE_CHECKING:
    from tei_ort.runtime.model import Model, RuntimeOptions

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Batches = list[list[Encoded]]

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
# Engine replicas (tei_ort.serve.loading): two sessions on half the cores each are kept only
# when they move this much more than one session on all of them. Which wins differs per CPU:
# MiniLM int8 on a 2-core Xeon [x86-amx] made 0.63-0.87x with two, on a 2-core AMD EPYC Zen 3
# [x86-avx2] 1.30-1.45x under load (python -m tei_ort.bench --compare, README: Many cores).
REPLICA_GAIN = 0.10
REPLICA_MAX_GRAPH_BYTES = 1 << 30  # larger graphs: one copy of the weights, no trial
# Every n-th fidelity text is timed (~92 texts; MiniLM on 2 Zen 3 cores: ~5 s, two layouts
# 1.16x and 1.23x apart in two trials). Every 6th took 4 s and measured 1.13x, nearer the margin.
REPLICA_TEXT_STRIDE = 3
# A trial whose figures fall within CLOSE_CALL of deciding the other way is timed again, up to
# TRIAL_REPEATS trials within REPEAT_BUDGET_S, and the trials' seconds add up; after n runs the
# band is CLOSE_CALL / sqrt(n), as the summed figures' noise shrinks. On a shared host
# the noise is between trials, not within one (more rounds did not narrow it): on a noisy 2-core
# AMD EPYC Zen 3 [x86-avx2], one trial read int8-w7 at 0.905-1.36x fp32 and picked fp32 in 4 of
# 16 (served ~15-30% slower, and cached), and kept one engine in 1 of 16; three runs with
# CLOSE_CALL 0.15 picked int8-w7 and two engines in 8 of 8 (0.05 still let a 0.905x reading
# through) (scripts/trial_close_calls.py, docs/measurements/2026-12-01-cpu-avx2/trial-close-calls.txt).
# Applied on every class: it only measures more where a result is close, never changes how the
# figures decide, so elsewhere it costs first-start seconds at most (set on that one class).
CLOSE_CALL = 0.15
TRIAL_REPEATS = 3
REPEAT_BUDGET_S = 20.0


def fastest(plans: Mapping[K, tuple[Model, Batches]]) -> dict[K, float]:
    """Real tokens/s of each contender's batches, its fastest of TRIAL_ROUNDS interleaved rounds
    (fewer past TRIAL_BUDGET_S)."""
    best: dict[K, float] = {}
    started = time.perf_counter()
    for _ in range(TRIAL_ROUNDS):
        for key, (model, batches) in plans.items():
            model.forward(batches[-1])  # warm: first runs of a shape allocate and compile
            tick = time.perf_counter()
            for batch in batches:
                model.forward(batch)
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - tick)
        if time.perf_counter() - started > TRIAL_BUDGET_S:
            break
    return {
        key: round(sum(len(e) for b in plans[key][1] for e in b) / seconds, 1)
        for key, seconds in best.items()
    }


def replica_rates(whole: Model, halves: Sequence[Model], batches: Batches) -> dict[str, float]:
    """Real tokens/s of `batches` on `whole` (one after another, as one engine runs them) and
    on `halves` at once (each its share, as replicas fed by one queue run them), the fastest of
    TRIAL_ROUNDS interleaved rounds. Keys: "1" and the number of halves."""
    tokens = sum(len(e) for b in batches for e in b)
    n = len(halves)

    def share(i: int) -> None:
        for batch in batches[i::n]:
            halves[i].forward(batch)

    best = {"1": float("inf"), str(n): float("inf")}
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        for _ in range(TRIAL_ROUNDS):
            whole.forward(batches[-1])  # warm: first runs of a shape allocate
            tick = time.perf_counter()
            for batch in batches:
                whole.forward(batch)
            best["1"] = min(best["1"], time.perf_counter() - tick)
            for half in halves:
                half.forward(batches[-1])
            tick = time.perf_counter()
            list(pool.map(share, range(n)))
            best[str(n)] = min(best[str(n)], time.perf_counter() - tick)
            if time.perf_counter() - started > TRIAL_BUDGET_S:
                break
    return {key: round(tokens / seconds, 1) for key, seconds in best.items()}


def repeated(
    trial: Callable[[], dict[K, float]],
    close: Callable[[dict[K, float], float], bool],
    what: str,
) -> tuple[dict[K, float], int]:
    """Real tokens/s of each contender (`what`, for the log) over one run of `trial`, or more
    while `close` finds the figures too near to decide within the band (CLOSE_CALL over the
    square root of the runs so far; at most TRIAL_REPEATS runs, none begun past
    REPEAT_BUDGET_S): each contender's seconds summed over the runs, i.e. the harmonic mean of
    its rates. Returns the rates and the number of runs."""
    started = time.perf_counter()
    seconds_per_token: dict[K, float] = {}
    runs = 0
    while True:
        for key, rate in trial().items():
            seconds_per_token[key] = seconds_per_token.get(key, 0.0) + (
                1 / rate if rate > 0 else float("inf")
            )
        runs += 1
        rates = {key: round(runs / s, 1) for key, s in seconds_per_token.items()}
        if (
            runs >= TRIAL_REPEATS
            or not close(rates, CLOSE_CALL / math.sqrt(runs))
            or time.perf_counter() - started > REPEAT_BUDGET_S
        ):
            return rates, runs
        logger.info("%s: a close call (%s), timing again", what, _figures(rates))


def too_close_to_rank(rates: Mapping[K, float], band: float = CLOSE_CALL) -> bool:
    """The two fastest are within `band` of each other."""
    top = sorted(rates.values(), reverse=True)
    return len(top) > 1 and top[0] < top[1] * (1 + band)


def near_the_replica_margin(rates: Mapping[str, float], band: float = CLOSE_CALL) -> bool:
    """Two replicas' gain over one session is within `band` of REPLICA_GAIN."""
    if rates["1"] <= 0:
        return False
    gain = rates["2"] / rates["1"] - 1
    return abs(gain - REPLICA_GAIN) < band


def _figures(rates: Mapping[K, float]) -> str:
    return ", ".join(f"{key}: {rate:,.0f} tok/s" for key, rate in rates.items())


def candidate_batches(model: Model, texts: Sequence[str]) -> Batches:
    """The TRIAL_BATCHES batches of the longest texts, each as many as fit the provider's target
    padded tokens (what the server's batcher forms under load)."""
    budget = PROVIDERS[model.provider].target_batch_tokens or 8192
    return _batches(model.encode(list(texts)), budget)[-TRIAL_BATCHES:]


def layout_batches(model: Model, budget: int | None) -> Batches | None:
    """What the engine-layout trial times: every REPLICA_TEXT_STRIDE-th text of the package's
    fidelity set at `budget` (else the provider's), shortest batch first; None without one."""
    fidelity_set = fidelity_check.read_fidelity_set(model.path)
    if fidelity_set is None:
        return None
    encodings = model.encode(list(fidelity_set.vset.texts[::REPLICA_TEXT_STRIDE]))
    return _batches(encodings, budget or PROVIDERS[model.provider].target_batch_tokens or 8192)


def _batches(encodings: Sequence[Encoded], budget: int) -> Batches:
    return [[encodings[i] for i in batch] for batch in budget_batches(encodings, budget)]


def batch_tokens(model: Model, options: RuntimeOptions) -> tuple[int | None, str]:
    """The padded tokens per forward batch the server aims for with this model here: the
    provider's default where it has none or the package has no fidelity set, else the fastest
    of BATCH_BUDGETS in a short trial on the fidelity set's texts (cached like the checks)."""
    default = PROVIDERS[model.provider].target_batch_tokens
    provider_default = f"{default or 'no'} target batch tokens (the provider's default)"
    if default is None:
        return default, provider_default
    label = f"{model.provider.value}:{model.variant.name.value}"
    cache = ChecksCache(model.path, this_cpu(), options.intra_op_threads, options.checks_dir)
    rates = cache.get_budgets(label)
    if rates is None:  # first start here: measure (read the texts only now)
        fidelity_set = fidelity_check.read_fidelity_set(model.path)
        if fidelity_set is None:
            return default, provider_default
        encodings = model.encode(list(fidelity_set.vset.texts[::3]))
        plans = {b: (model, _batches(encodings, b)) for b in BATCH_BUDGETS}
        rates = fastest(plans)
        cache.put_budgets(label, rates)
        cache.save()
    top = max(rates.values())
    chosen = min(b for b, rate in rates.items() if rate >= top * (1 - BUDGET_TIE))
    figures = ", ".join(f"{b}: {rate:,.0f} tok/s" for b, rate in sorted(rates.items()))
    return chosen, f"{chosen} target batch tokens, by trial ({figures})"


def budget_batches(encodings: Sequence[Encoded], budget: int) -> list[list[int]]:
    """Indices of `encodings`, sorted by length, in batches of at most `budget` padded tokens
    (longest x rows), shortest batch first."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
    out: list[list[int]] = [[]]
    for index in order:  # ascending: the newest item is the longest of its batch
        if out[-1] and len(encodings[index]) * (len(out[-1]) + 1) > budget:
            out.append([])
        out[-1].append(index)
    return out
