"""tei-embed's progress lines off a terminal, and the summary's figures."""

from __future__ import annotations

import logging

import pytest

from tei_ort.bulk.progress import BarProgress, LogProgress, Summary, progress_for


def test_log_lines_count_reused_rows_but_not_in_the_rate(caplog: pytest.LogCaptureFixture) -> None:
    # interval 0: every shard logs, so the lines can be checked one by one.
    progress = LogProgress(total=100, interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="tei_ort.bulk.progress"):
        progress.reused(40)
        progress.advance(30, 600)
        progress.advance(30, 600)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("70/100 inputs (70.0%), ")
    assert lines[1].startswith("100/100 inputs (100.0%), ")
    assert lines[1].endswith("ETA 0 s")


def test_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    progress = LogProgress(total=1000, interval_s=3600.0)
    with caplog.at_level(logging.INFO, logger="tei_ort.bulk.progress"):
        for _ in range(9):
            progress.advance(100, 1)
        progress.advance(100, 1)  # the last shard always logs
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["100/1000", "1000/1000"]


def test_summary_figures() -> None:
    summary = Summary(
        rows=110,
        embedded=100,
        bad_rows=10,
        tokens=2000,
        seconds=4.0,
        shards_written=3,
        shards_reused=1,
    )
    assert (summary.inputs_per_s, summary.tokens_per_s) == (25.0, 500.0)
    assert summary.describe() == (
        "100 inputs embedded, 10 bad rows skipped, 2000 tokens in 4.0 s (25.0 inputs/s, "
        "500 tokens/s); shards: 3 written, 1 already done"
    )


def test_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    assert isinstance(progress_for(10, on_terminal=False), LogProgress)
    bar = progress_for(10, on_terminal=True)
    assert isinstance(bar, BarProgress)
    bar.close()


def test_the_bar_counts_reused_rows_and_advances(capsys: pytest.CaptureFixture[str]) -> None:
    bar = BarProgress(100)
    bar.reused(40)
    bar.advance(10, 500)
    assert bar._bar.n == 50  # the count the bar shows
    bar.close()
    shown = capsys.readouterr().err
    assert "50/100" in shown and "tokens/s" in shown
