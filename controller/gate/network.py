"""The gate network and the mixture loss of docs/design.md section 3."""

from __future__ import annotations

import torch
from torch import nn


class GateNet(nn.Module):
    """Prompt embedding -> one logit per expert."""

    def __init__(self, in_features: int, n_experts: int, hidden: int = 64) -> None:
        super().__init__()
        self.in_features, self.n_experts, self.hidden = in_features, n_experts, hidden
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_experts)
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def restrict(logits: torch.Tensor, subset: list[int]) -> torch.Tensor:
    """Logits of the experts in ``subset`` only: softmax over them is g_S (Luce's axiom)."""
    return logits[:, subset]


def mixture_nll(logits: torch.Tensor, gold_probs: torch.Tensor) -> torch.Tensor:
    """Mean of -log sum_n softmax(logits)_n p_n(y*), computed stably in log space.

    ``gold_probs`` is [samples, experts]: each expert's probability of the gold answer.
    """
    log_weights = torch.log_softmax(logits, dim=1)
    log_gold = torch.log(gold_probs.clamp_min(1e-12))
    return -torch.logsumexp(log_weights + log_gold, dim=1).mean()
