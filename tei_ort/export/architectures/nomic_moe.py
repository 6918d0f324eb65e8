"""The mixture-of-experts MLP of nomic-embed-text-v2-moe (nomic_bert with moe_every_n_layers),
as TEI's candle port and vLLM's bert_with_rope read it (megablocks' layout). Tensor names under
encoder.layers.N.mlp (N % moe_every_n_layers == 1):

  router.layer (num_experts, hidden), no bias;
  experts.mlp.w1 and experts.mlp.w2, each (num_experts * n_inner, hidden), expert-major;
  experts.bias (hidden,).

out = sum over each token's top-k experts e of p_e * (act(x @ w1_e.T) @ w2_e) + bias, with p the
softmax of the router's logits and no renormalization of the top k (moe_normalize_expert_weights
false). The graph computes every expert on every token and zeroes the unrouted ones: the same
numbers as routing (each unrouted term is multiplied by exactly 0), num_experts / top_k times the
MLP work, and no data-dependent shapes for ONNX."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Activation = Callable[[torch.Tensor], torch.Tensor]


class Router(nn.Module):
    def __init__(self, hidden: int, experts: int) -> None:
        super().__init__()
        self.layer = nn.Linear(hidden, experts, bias=False)


class ExpertWeights(nn.Module):
    def __init__(self, hidden: int, inner: int, experts: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts * inner, hidden))
        self.w2 = nn.Parameter(torch.empty(experts * inner, hidden))


class Experts(nn.Module):
    def __init__(self, hidden: int, inner: int, experts: int) -> None:
        super().__init__()
        self.mlp = ExpertWeights(hidden, inner, experts)
        self.bias = nn.Parameter(torch.zeros(hidden))


class MoeMlp(nn.Module):
    def __init__(self, hidden: int, inner: int, experts: int, top_k: int, act: Activation) -> None:
        super().__init__()
        self.router = Router(hidden, experts)
        self.experts = Experts(hidden, inner, experts)
        self.num_experts, self.inner, self.top_k, self.act = experts, inner, top_k, act

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, experts): each token's top-k softmax probabilities, zero elsewhere."""
        probabilities = self.router.layer(x).float().softmax(dim=-1)
        top, chosen = probabilities.topk(self.top_k, dim=-1)
        return torch.zeros_like(probabilities).scatter(-1, chosen, top).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.routing(x)  # (batch, seq, experts)
        w1 = self.experts.mlp.w1.view(self.num_experts, self.inner, -1)  # (experts, inner, hidden)
        w2 = self.experts.mlp.w2.view(self.num_experts, self.inner, -1)
        out = torch.zeros_like(x)
        for expert in range(self.num_experts):  # unrolled in the graph: num_experts is static
            y = self.act(x @ w1[expert].T) @ w2[expert]  # (batch, seq, hidden)
            out = out + weights[..., expert : expert + 1] * y
        return out + self.experts.bias
