"""Progress of a job: a tqdm bar (inputs, tokens/s, ETA) on a terminal, log lines otherwise, and
the summary at the end. Rows of shards finished by an earlier run count towards the total but not
towards this run's rates."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    rows: int  # job rows handled by this run, bad ones included
    embedded: int
    bad_rows: int
    tokens: int
    seconds: float
    shards_written: int
    shards_reused: int  # finished by an earlier run

    @property
    def inputs_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"{self.embedded} inputs embedded, {self.bad_rows} bad rows skipped, "
            f"{self.tokens} tokens in {self.seconds:.1f} s ({self.inputs_per_s:.1f} inputs/s, "
            f"{self.tokens_per_s:.0f} tokens/s); shards: {self.shards_written} written, "
            f"{self.shards_reused} already done"
        )


class Progress(Protocol):
    def reused(self, rows: int) -> None: ...
    def advance(self, rows: int, tokens: int) -> None: ...
    def close(self) -> None: ...


class BarProgress:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="input", dynamic_ncols=True, smoothing=0.1)
        self._tokens = 0
        self._started = time.perf_counter()

    def reused(self, rows: int) -> None:
        # Moves the bar without a rate: tqdm's `initial` semantics, applied after the start.
        self._bar.n += rows
        self._bar.last_print_n = self._bar.n
        self._bar.refresh()

    def advance(self, rows: int, tokens: int) -> None:
        self._tokens += tokens
        elapsed = time.perf_counter() - self._started
        self._bar.set_postfix_str(f"{self._tokens / elapsed:.0f} tokens/s", refresh=False)
        self._bar.update(rows)

    def close(self) -> None:
        self._bar.close()


class LogProgress:
    """One INFO line per `interval_s` at most, when a shard finishes (the unit of progress)."""

    def __init__(self, total: int, interval_s: float = 10.0) -> None:
        self._total = total
        self._interval_s = interval_s
        self._done = 0
        self._rows = 0
        self._tokens = 0
        self._started = time.perf_counter()
        self._last_log = float("-inf")

    def reused(self, rows: int) -> None:
        self._done += rows

    def advance(self, rows: int, tokens: int) -> None:
        self._done += rows
        self._rows += rows
        self._tokens += tokens
        now = time.perf_counter()
        if now - self._last_log < self._interval_s and self._done < self._total:
            return
        self._last_log = now
        elapsed = now - self._started
        rate = self._rows / elapsed if elapsed > 0 else 0.0
        eta = (self._total - self._done) / rate if rate > 0 else float("nan")
        logger.info(
            "%d/%d inputs (%.1f%%), %.1f inputs/s, %.0f tokens/s, ETA %.0f s",
            self._done,
            self._total,
            100.0 * self._done / max(self._total, 1),
            rate,
            self._tokens / elapsed if elapsed > 0 else 0.0,
            eta,
        )

    def close(self) -> None:
        pass


def progress_for(total: int, on_terminal: bool) -> Progress:
    return BarProgress(total) if on_terminal else LogProgress(total)
