"""`python -m tei_ort.bench --compare`: parsing, the interleaved schedule, merging rounds, ratios."""

from __future__ import annotations

import pytest

from tei_ort.bench import compare
from tei_ort.bench.measure import Measurement

A = compare.Config("1x2", ("--engine-replicas", "1", "--intra-op-threads", "2"))
B = compare.Config("2x1", ("--engine-replicas", "2", "--intra-op-threads", "1"))


def test_parse() -> None:
    spec = (
        "1x2=--engine-replicas 1 --intra-op-threads 2; 2x1=--engine-replicas 2 --intra-op-threads 1"
    )
    assert compare.parse(spec) == [A, B]
    assert compare.parse("a=;b=--ort-spinning") == [
        compare.Config("a", ()),
        compare.Config("b", ("--ort-spinning",)),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a=--x", "at least two"),
        ("a=--x;--y", "LABEL="),
        ("=--x;b=", "LABEL="),
        ("a=--x;a=--y", "labels must differ"),
    ],
)
def test_parse_refuses(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare.parse(spec)


def test_schedule_interleaves_and_reverses_each_round() -> None:
    p1, p2 = compare.Point(1, 1), compare.Point(8, 1)
    runs = compare.schedule([A, B], [p1, p2], rounds=2)
    assert runs == [(0, p1), (1, p1), (0, p2), (1, p2), (1, p1), (0, p1), (1, p2), (0, p2)]


def measurement(name: str, tokens: int, seconds: float, latencies: list[float]) -> Measurement:
    return Measurement(name, "server", tokens // 10, tokens, seconds, latencies, 8, 1)


def test_merge_sums_rounds() -> None:
    merged = compare.merge(
        [measurement("x", 1000, 2.0, [0.1, 0.3]), measurement("x", 3000, 2.0, [0.2])]
    )
    assert (merged.tokens, merged.seconds, merged.texts) == (4000, 4.0, 400)
    assert merged.tokens_per_s == 1000 and sorted(merged.latencies_s) == [0.1, 0.2, 0.3]
    assert (merged.concurrency, merged.texts_per_request) == (8, 1)


def test_ratios_against_the_first_config() -> None:
    point = compare.Point(8, 1)
    got = compare.ratios(
        [
            measurement(compare.name(A, point), 1000, 1.0, [0.2, 0.2, 0.2]),
            measurement(compare.name(B, point), 1500, 1.0, [0.1, 0.1, 0.1]),
        ],
        [A, B],
        [point],
    )
    assert got == ["c=8 x1: 2x1 / 1x2 tokens/s 1.50x, p50 0.50x"]
    assert compare.name(A, point) == "server[1x2] c=8 x1"


def test_servers_side_by_side_leave_the_metrics_port_alone() -> None:
    assert compare.server_args(A) == (*A.args, "--prometheus-port", "0")
    pinned = compare.Config("p", ("--prometheus-port", "9100"))
    assert compare.server_args(pinned) == pinned.args
