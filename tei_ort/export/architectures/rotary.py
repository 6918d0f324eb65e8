"""Rotary position embeddings as GPT-NeoX and LLaMA apply them (the two halves of each head
rotated together, not interleaved pairs), for our own modules of the rotary encoders."""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """(head_dim / 2,) 1 / base^(2i / head_dim)."""
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def ntk_inverse_frequencies(head_dim: int, base: float, factor: float) -> torch.Tensor:
    """NTK-aware scaling as GTE (Alibaba-NLP/new-impl) applies it: base * factor, and every
    frequency divided by factor^(2 / head_dim)."""
    return inverse_frequencies(head_dim, base * factor) / factor ** (2 / head_dim)


def cos_sin(inv_freq: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(seq, head_dim) cos and sin for positions 0..seq-1, each frequency used for both halves."""
    positions = torch.arange(seq_len, dtype=torch.float32)
    angles = positions[:, None] * inv_freq[None, :]  # (seq, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (batch, heads, seq, head_dim) rotated: x * cos + rotate_half(x) * sin."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin
