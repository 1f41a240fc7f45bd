"""The gate: the mixture loss, training once on every expert, checkpoints, the real encoder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from controller.gate.dataset import SplitData
from controller.gate.encoder import PromptEncoder
from controller.gate.errors import GateError
from controller.gate.gate import Gate
from controller.gate.network import GateNet, mixture_nll
from controller.gate.preservation import random_subsets
from controller.gate.training import TrainConfig, evaluate, logits_of, train_gate


def test_mixture_nll_is_the_designs_loss() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, -1.0]])
    gold = torch.tensor([[0.2, 0.6], [0.9, 0.0]])
    expected = (
        -(
            math.log(0.25 * 0.2 + 0.75 * 0.6)
            + math.log(math.exp(2) / (math.exp(2) + math.exp(-1)) * 0.9)
        )
        / 2
    )
    assert float(mixture_nll(logits, gold)) == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(float(mixture_nll(logits, torch.zeros(2, 2))))  # clamped at 1e-12


def _synthetic(n: int, seed: int) -> SplitData:
    """Two experts; expert 0 is right on prompts of one kind, expert 1 on the other kind."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    centres = np.eye(2, 16, dtype=np.float32)
    emb = centres[kind] + 0.05 * rng.normal(size=(n, 16)).astype(np.float32)
    probs = []
    for k in kind:
        good, bad = np.array([0.9, 0.1]), np.array([0.2, 0.8])
        probs.append(np.stack([good, bad]) if k == 0 else np.stack([bad, good]))
    return SplitData(
        items=[None] * n, embeddings=emb, probs=probs, labels=np.zeros(n, dtype=np.int64)
    )  # type: ignore[list-item]


def test_training_learns_which_expert_to_trust() -> None:
    train, val, test = _synthetic(200, 1), _synthetic(80, 2), _synthetic(80, 3)
    net, val_loss = train_gate(train, val, TrainConfig(hidden=8, epochs=300, lr=0.05))
    loss, acc = evaluate(logits_of(net, test), test, [0, 1])
    uniform_loss, uniform_acc = evaluate(np.zeros((len(test), 2)), test, [0, 1])
    assert loss < uniform_loss - 0.3 and acc == 1.0 and uniform_acc == 1.0
    assert val_loss < uniform_loss


def test_checkpoints_round_trip_and_bad_files_are_refused(tmp_path: Path) -> None:
    net = GateNet(16, 3, hidden=4)
    gate = Gate(net, ["a@x", "b@x", "c@y"], "lab", "0" * 64)
    path = tmp_path / "gate.pt"
    gate.save(path)
    loaded = Gate.load(path)
    assert loaded.expert_keys == gate.expert_keys and loaded.fleet == "lab"
    emb = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    assert np.allclose(loaded.logits_of_embeddings(emb), gate.logits_of_embeddings(emb))
    with pytest.raises(GateError, match="does not exist"):
        Gate.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GateError, match="cannot be read"):
        Gate.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(GateError, match="not a moe2 gate"):
        Gate.load(other)


def test_random_subsets_are_distinct_and_proper() -> None:
    subsets = random_subsets(6, 20, seed=0)
    assert len(subsets) == 20 and len({tuple(s) for s in subsets}) == 20
    assert all(2 <= len(s) <= 5 for s in subsets)
    assert random_subsets(3, 20, seed=0) == [[0, 1], [0, 2], [1, 2]]


@pytest.fixture(scope="module")
def encoder() -> PromptEncoder:
    return PromptEncoder()


def test_the_shipped_encoder_embeds_offline(encoder: PromptEncoder) -> None:
    vectors = encoder.encode(["The capital of France is", "2 + 2 =", "The capital of Spain is"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]  # similar prompts are close
