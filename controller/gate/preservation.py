"""Optimality preservation, shown empirically (docs/design.md section 3).

Softmax restriction keeps the ratio of any two experts' weights whatever else is in S, so the
gate trained once on every expert, restricted to S, should be about as good on S as a gate
trained on S alone. For random subsets we train the latter and report both on the test split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from controller.gate.dataset import GateData
from controller.gate.gate import Gate
from controller.gate.training import TrainConfig, evaluate, logits_of, train_gate


@dataclass(frozen=True)
class PreservationRow:
    subset: list[int]
    loss_restricted: float
    loss_trained: float
    acc_restricted: float
    acc_trained: float

    @property
    def loss_gap(self) -> float:
        """Positive when the gate trained on S alone is better (lower test loss)."""
        return self.loss_restricted - self.loss_trained

    @property
    def acc_gap(self) -> float:
        return self.acc_trained - self.acc_restricted


def random_subsets(n_experts: int, count: int, seed: int) -> list[list[int]]:
    """Distinct random subsets with 2 to n-1 experts (all of them when there are fewer)."""
    rng = random.Random(seed)
    possible = sum(
        1 for mask in range(1, 2**n_experts) if 2 <= bin(mask).count("1") <= n_experts - 1
    )
    wanted = min(count, possible)
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < wanted:
        size = rng.randint(2, n_experts - 1)
        chosen.add(tuple(sorted(rng.sample(range(n_experts), size))))
    return [list(s) for s in sorted(chosen, key=lambda s: (len(s), s))]


def preservation_table(
    gate: Gate, data: GateData, subsets: int = 20, seed: int = 0, config: TrainConfig | None = None
) -> list[PreservationRow]:
    config = config or TrainConfig(hidden=gate.net.hidden)
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    full_logits = logits_of(gate.net, test)
    rows = []
    for subset in random_subsets(len(data.expert_keys), subsets, seed):
        net, _ = train_gate(train, val, config, subset=subset)
        loss_t, acc_t = evaluate(logits_of(net, test), test, subset)
        loss_r, acc_r = evaluate(full_logits[:, subset], test, subset)
        rows.append(PreservationRow(subset, loss_r, loss_t, acc_r, acc_t))
    return rows


def to_markdown(rows: list[PreservationRow], keys: list[str]) -> str:
    lines = [
        "| S | test loss, full gate restricted | test loss, trained on S | gap | "
        "test acc, restricted | test acc, trained on S |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        names = ", ".join(keys[i] for i in r.subset)
        lines.append(
            f"| {names} | {r.loss_restricted:.4f} | {r.loss_trained:.4f} | {r.loss_gap:+.4f} | "
            f"{r.acc_restricted:.3f} | {r.acc_trained:.3f} |"
        )
    gaps = [r.loss_gap for r in rows]
    lines.append("")
    lines.append(
        f"Subsets: {len(rows)}; loss gap mean {sum(gaps) / len(gaps):+.4f}, "
        f"max {max(gaps):+.4f}; accuracy gap (trained − restricted) max "
        f"{max(r.acc_gap for r in rows):+.3f}."
    )
    return "\n".join(lines) + "\n"
