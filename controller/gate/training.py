"""Training the gate once on the full expert set, and evaluating any subset with it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from controller.gate.dataset import SplitData
from controller.gate.network import GateNet, mixture_nll


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 64
    epochs: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-3
    patience: int = 40
    seed: int = 0


def train_gate(
    train: SplitData, val: SplitData, config: TrainConfig, subset: list[int] | None = None
) -> tuple[GateNet, float]:
    """Full-batch Adam on the mixture cross-entropy, early-stopped on validation loss.

    With ``subset``, the gate is trained for those experts alone (used to show that the full
    gate restricted to a subset is as good: optimality preservation). Returns the network with
    its best validation weights and that validation loss.
    """
    torch.manual_seed(config.seed)
    columns = subset if subset is not None else list(range(train.gold.shape[1]))
    x_train = torch.from_numpy(train.embeddings)
    q_train = torch.from_numpy(train.gold[:, columns]).float()
    x_val = torch.from_numpy(val.embeddings)
    q_val = torch.from_numpy(val.gold[:, columns]).float()
    net = GateNet(train.embeddings.shape[1], len(columns), config.hidden)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_loss, best_state, waited = float("inf"), None, 0
    for _ in range(config.epochs):
        net.train()
        optimiser.zero_grad()
        loss = mixture_nll(net(x_train), q_train)
        loss.backward()
        optimiser.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(mixture_nll(net(x_val), q_val))
        if val_loss < best_loss - 1e-6:
            best_loss, waited = val_loss, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return net, best_loss


def logits_of(net: GateNet, data: SplitData) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(data.embeddings)).numpy().astype(np.float64)


def evaluate(subset_logits: np.ndarray, data: SplitData, subset: list[int]) -> tuple[float, float]:
    """Loss and accuracy of the gate-weighted mixture of ``subset``; ``subset_logits`` has one
    column per expert of the subset (the full gate's columns for S, or a gate trained on S)."""
    restricted = subset_logits
    weights = np.exp(restricted - restricted.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    losses, correct = [], 0
    for w, probs, label in zip(weights, data.probs, data.labels, strict=True):
        mixture = w @ probs[subset]
        losses.append(-np.log(max(1e-12, float(mixture[label]))))
        correct += int(np.argmax(mixture) == label)
    return float(np.mean(losses)), correct / len(data)
