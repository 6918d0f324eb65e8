"""`--compare`: server configurations side by side in one run, e.g. one engine replica with two
intra-op threads against two replicas with one each:

    python -m tei_ort.bench --compare "1x2=--engine-replicas 1 --intra-op-threads 2;
                                       2x1=--engine-replicas 2 --intra-op-threads 1"

Every configuration's server is started first (each idles while another is loaded: no spinning
threads), then each load point runs on each server in turn, the order reversed every round
(A B, B A, ...), so a slow spell of a shared machine falls on all of them alike. Reported as the
ratio of each configuration's tokens/s to the first's, per point.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tei_ort.bench import server
from tei_ort.bench.measure import Measurement


@dataclass(frozen=True)
class Config:
    label: str
    args: tuple[str, ...]  # extra tei-serve arguments


@dataclass(frozen=True)
class Point:
    concurrency: int
    texts_per_request: int


def parse(spec: str) -> list[Config]:
    """'LABEL=ARGS;LABEL=ARGS' -> configurations; ValueError when malformed."""
    configs = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        label, sep, args = part.partition("=")
        if not sep or not label.strip():
            raise ValueError(f"--compare: {part!r} is not LABEL=tei-serve arguments")
        configs.append(Config(label.strip(), tuple(args.split())))
    if len(configs) < 2:
        raise ValueError("--compare needs at least two LABEL=ARGS configurations")
    if len({c.label for c in configs}) != len(configs):
        raise ValueError("--compare: labels must differ")
    return configs


def name(config: Config, point: Point) -> str:
    return f"server[{config.label}] c={point.concurrency} x{point.texts_per_request}"


def schedule(
    configs: Sequence[Config], points: Sequence[Point], rounds: int
) -> list[tuple[int, Point]]:
    """(config index, point) in run order: every point on every config, each round reversing
    the order of configs."""
    order = list(range(len(configs)))
    runs = []
    for round_ in range(rounds):
        for point in points:
            runs += [(i, point) for i in (order if round_ % 2 == 0 else order[::-1])]
    return runs


def merge(measurements: Sequence[Measurement]) -> Measurement:
    """One point's rounds as one measurement: tokens and seconds summed, latencies pooled."""
    first = measurements[0]
    return Measurement(
        first.name,
        first.group,
        sum(m.texts for m in measurements),
        sum(m.tokens for m in measurements),
        sum(m.seconds for m in measurements),
        [x for m in measurements for x in m.latencies_s],
        concurrency=first.concurrency,
        texts_per_request=first.texts_per_request,
        errors=sum(m.errors for m in measurements),
    )


def server_args(config: Config) -> tuple[str, ...]:
    # The servers run side by side: only one could take the default metrics port (/metrics on
    # each server's own port answers either way).
    if "--prometheus-port" in config.args:
        return config.args
    return (*config.args, "--prometheus-port", "0")


def run(
    package: Path,
    configs: Sequence[Config],
    points: Sequence[Point],
    corpus: tuple[Sequence[str], Sequence[int]],  # texts, their token counts
    duration_s: float,
    rounds: int,
    out: Path,
) -> list[Measurement]:
    texts, token_counts = corpus
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                server.running_server(package, server_args(c), out / f"server-{i}.log")
            )
            for i, c in enumerate(configs)
        ]
        runs: dict[str, list[Measurement]] = {}
        for index, point in schedule(configs, points, rounds):
            key = name(configs[index], point)
            measured = server.load(
                servers[index],
                texts,
                token_counts,
                point.concurrency,
                point.texts_per_request,
                duration_s,
                key,
            )
            runs.setdefault(key, []).append(measured)
    return [merge(runs[name(c, p)]) for p in points for c in configs]


def ratios(
    measurements: Sequence[Measurement], configs: Sequence[Config], points: Sequence[Point]
) -> list[str]:
    """Per point: each configuration's tokens/s and p50 latency against the first's."""
    by_name = {m.name: m for m in measurements}
    lines = []
    base = configs[0]
    for point in points:
        reference = by_name[name(base, point)]
        for config in configs[1:]:
            other = by_name[name(config, point)]
            speed = other.tokens_per_s / reference.tokens_per_s if reference.tokens_per_s else 0
            p50 = [m.percentile_ms(50) for m in (other, reference)]
            latency = f", p50 {p50[0] / p50[1]:.2f}x" if p50[0] and p50[1] else ""
            lines.append(
                f"c={point.concurrency} x{point.texts_per_request}: {config.label} / {base.label} "
                f"tokens/s {speed:.2f}x{latency}"
            )
    return lines
