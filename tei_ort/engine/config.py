"""The engine's limits (EngineConfig, TEI's flags of the same names) and what it reports about
itself (EngineStats, for /metrics)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

# OpenAI's embeddings API takes up to 2,048 inputs per request, and its clients batch to match
# (LangChain's OpenAIEmbeddings sends 1,000 by default): TEI's 32 breaks them. A request's inputs
# are split across forward batches by the token budget, so a big client batch costs no more
# memory per forward than many small requests.
DEFAULT_MAX_CLIENT_BATCH_SIZE = 2048


def default_tokenization_workers() -> int:
    """TEI's clamp(cores - 1, 1, 64), but at least 2: each worker runs a whole request's batch
    call (itself parallel in Rust), and a second worker keeps one huge request from holding up
    every small one behind it."""
    return max(2, min((os.cpu_count() or 1) - 1, 64))


def replica_threads(
    intra_op_threads: int | None, replicas: int, cores: int | None = None
) -> int | None:
    """Intra-op threads per engine replica: the flag when given (it means per replica), else
    the physical cores (ORT's own default for one session) split evenly, at least one each;
    None for one replica (ORT's default, as before replicas existed)."""
    if replicas < 1:
        raise ValueError(f"engine replicas must be at least 1, got {replicas}")
    if intra_op_threads is not None or replicas == 1:
        return intra_op_threads
    return max(1, (cores or physical_cores()) // replicas)


def physical_cores() -> int:
    """What ONNX Runtime gives one session by default: a thread per physical core."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass(frozen=True)
class EngineConfig:
    """TEI's limits of the same names, plus `target_batch_tokens` (ours)."""

    # Requests (not inputs, as TEI counts) in flight, tokenization included: TEI's per-input
    # permits would reject any client batch larger than this limit outright.
    max_concurrent_requests: int = 512
    # Padded tokens per forward batch: longest input in the batch x inputs.
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None  # inputs per forward batch; None: tokens only
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE
    auto_truncate: bool = True
    tokenization_workers: int | None = None  # None: default_tokenization_workers()
    # Padded tokens the batcher aims for per forward, never above max_batch_tokens (None: that
    # cap). On CPU, smaller batches run faster per token (activations stay in cache): MiniLM on 2
    # cores ran 1.85x the tokens/s at 2,048 than at 16,384. Set per execution provider.
    target_batch_tokens: int | None = None
    # A batch stops growing before its padding exceeds this fraction of its real tokens (plus
    # queue.PADDING_SLACK_TOKENS). On a CPU a forward costs about the same per padded token at
    # any batch size, so padding is lost work: MiniLM fp32 on 2 cores ran 8 concurrent one-text
    # requests, padded to their longest, at a quarter of one-at-a-time tokens/s. None: no limit
    # (fill the budget), where batching pays more than padding costs (a GPU).
    max_padding_ratio: float | None = 0.25

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "max_batch_tokens", "max_client_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_batch_requests", "tokenization_workers", "target_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {value}")
        if self.max_padding_ratio is not None and self.max_padding_ratio < 0:
            raise ValueError(
                f"max_padding_ratio must be >= 0 (or unset), got {self.max_padding_ratio}"
            )


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics; *_total fields only grow."""

    queue_size: int  # inputs waiting for a batch (TEI's te_queue_size)
    in_flight: int  # admitted requests not yet answered
    batch_next_size: int  # inputs in the last batch formed (te_batch_next_size)
    batch_next_tokens: int  # real tokens in it (te_batch_next_tokens)
    batch_next_padded_tokens: int  # longest x inputs in it
    batches_total: int
    batch_failures_total: int
    dropped_inputs_total: int  # queued inputs dropped because their client went away
    overloaded_total: int  # requests refused by admission
    is_healthy: bool


@dataclass(frozen=True)
class BatchReport:
    """One forward pass, as batch listeners see it (TEI's te_batch_next_* histograms)."""

    size: int  # inputs it ran on
    tokens: int  # their real tokens
    padded_tokens: int  # longest x size: what the padded graph computed
    inference_s: float
    failed: bool
