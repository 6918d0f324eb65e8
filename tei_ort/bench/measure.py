"""One measurement = real (non-padding) tokens processed in some seconds, plus latencies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Measurement:
    name: str
    group: str  # "raw", "baseline", "server"
    texts: int
    tokens: int  # real tokens, special tokens included, padding excluded
    seconds: float
    latencies_s: list[float] = field(default_factory=list)  # per request (server) or batch (raw)
    concurrency: int | None = None
    texts_per_request: int | None = None
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def embeddings_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "group": self.group,
            "texts": self.texts,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "embeddings_per_s": self.embeddings_per_s,
            "p50_ms": self.percentile_ms(50),
            "p90_ms": self.percentile_ms(90),
            "p99_ms": self.percentile_ms(99),
            "concurrency": self.concurrency,
            "texts_per_request": self.texts_per_request,
            "errors": self.errors,
            "latencies_s": self.latencies_s,
        }
