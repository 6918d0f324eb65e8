"""The first-start trials' close calls (runtime/trial.repeated): a result too near to decide is
timed again, and the runs' seconds add up. The trials themselves run on real models in
test_selection.py and tests/serve/test_replica_trial.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tei_ort.runtime import trial


def _readings(*rates: dict[str, float]) -> tuple[list[int], Callable[[], dict[str, float]]]:
    runs: list[int] = []
    pending: Iterator[dict[str, float]] = iter(rates)

    def run() -> dict[str, float]:
        runs.append(1)
        return next(pending)

    return runs, run


def test_a_clear_result_is_timed_once() -> None:
    runs, run = _readings({"a": 150.0, "b": 100.0})
    assert trial.repeated(run, trial.too_close_to_rank, "x") == ({"a": 150.0, "b": 100.0}, 1)
    assert runs == [1]


def test_a_close_call_adds_the_seconds_of_each_run() -> None:
    runs, run = _readings({"a": 100.0, "b": 105.0}, {"a": 200.0, "b": 100.0})
    rates, count = trial.repeated(run, trial.too_close_to_rank, "x")
    # Each contender's rate over both runs: tokens over summed seconds, the harmonic mean.
    assert rates == {"a": round(2 / (1 / 100 + 1 / 200), 1), "b": round(2 / (1 / 105 + 1 / 100), 1)}
    assert count == 2 and runs == [1, 1]


def test_the_band_narrows_as_runs_add_up() -> None:
    # 12% apart: close after one run (band 15%), decided after two (15% / sqrt(2) = 10.6%).
    runs, run = _readings(*[{"a": 112.0, "b": 100.0}] * 3)
    assert trial.repeated(run, trial.too_close_to_rank, "x") == ({"a": 112.0, "b": 100.0}, 2)
    assert runs == [1, 1]


def test_close_calls_stop_at_the_most_runs(caplog: pytest.LogCaptureFixture) -> None:
    runs, run = _readings(*[{"a": 100.0, "b": 101.0}] * 10)
    with caplog.at_level("INFO", logger="tei_ort.runtime.trial"):
        rates, count = trial.repeated(run, trial.too_close_to_rank, "variants")
    assert count == trial.TRIAL_REPEATS == len(runs) == 3
    assert rates == {"a": 100.0, "b": 101.0}
    assert caplog.text.count("variants: a close call (a: 100 tok/s, b: 101 tok/s)") == 2


def test_close_calls_stop_past_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trial, "REPEAT_BUDGET_S", 0.0)  # a large model's trial took it all
    _, run = _readings(*[{"a": 100.0, "b": 101.0}] * 10)
    assert trial.repeated(run, trial.too_close_to_rank, "x")[1] == 1


@pytest.mark.parametrize(
    ("rates", "close"),
    [
        ({"a": 100.0}, False),  # one contender: nothing to rank
        ({"a": 100.0, "b": 114.0}, True),
        ({"a": 114.0, "b": 100.0, "c": 10.0}, True),
        ({"a": 100.0, "b": 116.0}, False),
        ({"a": 100.0, "b": 100.0}, True),
    ],
)
def test_too_close_to_rank_means_the_two_fastest_within_the_close_call(
    rates: dict[str, float], close: bool
) -> None:
    assert trial.CLOSE_CALL == 0.15
    assert trial.too_close_to_rank(rates) is close
    assert trial.too_close_to_rank(rates, 0.0) is False


@pytest.mark.parametrize(
    ("two", "close"),
    [(1100.0, True), (960.0, True), (1240.0, True), (940.0, False), (1260.0, False)],
)
def test_near_the_replica_margin_means_within_the_close_call_of_the_gain(
    two: float, close: bool
) -> None:
    assert trial.REPLICA_GAIN == 0.10
    assert trial.near_the_replica_margin({"1": 1000.0, "2": two}) is close
    assert trial.near_the_replica_margin({"1": 1000.0, "2": two}, 0.0) is False


def test_a_zero_rate_is_no_crash() -> None:
    assert trial.near_the_replica_margin({"1": 0.0, "2": 10.0}) is False
    _, run = _readings({"a": 0.0, "b": 100.0})
    assert trial.repeated(run, trial.too_close_to_rank, "x") == ({"a": 0.0, "b": 100.0}, 1)
