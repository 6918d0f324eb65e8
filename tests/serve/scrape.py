"""Read a Prometheus text exposition into {(name, labels): value}, by the sample names exactly
as written (prometheus-client's own parser renames counters to <name>_total; Prometheus does not)."""

from __future__ import annotations

import re

import httpx

Sample = tuple[str, frozenset[tuple[str, str]]]
_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[Sample, float]:
    samples: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match is not None, line
        labels = frozenset(_LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def scrape(client: httpx.Client, path: str = "/metrics") -> dict[Sample, float]:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The sample with exactly these labels; without a `model` label given, the sum over every
    model's sample (te_* series carry one; with one model served, that model's)."""
    if "model" in labels:
        return samples.get((name, frozenset(labels.items())), 0.0)
    wanted = frozenset(labels.items())
    return sum(
        amount
        for (sample, sample_labels), amount in samples.items()
        if sample == name
        and frozenset(pair for pair in sample_labels if pair[0] != "model") == wanted
    )
