"""Selection instances for the solver and search tests: random ones (as JSON data or parsed),
two small fixed ones (a loss that is not monotone, gates that rank for top_k), written to a
file, and the ``moe2 select`` command run on them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from controller.selection import SelectionInstance, parse_instance

CATEGORIES = ("math", "chat")


def instance_data(
    rng: np.random.Generator,
    n_experts: int,
    n_samples: int,
    *,
    budget: str = "tight",
    logits: str = "noise",
    top_k: int | None = None,
) -> dict[str, Any]:
    """A random instance as JSON data.

    budget: "tight" (a few experts fit, a few together), "loose" (every expert fits, energy for
    about half of them) or "none". logits: "noise" (uninformative), "informative" (higher for
    better experts) or "adversarial" (higher for worse experts: adding experts hurts).
    """
    energy = np.exp(rng.uniform(math.log(0.5), math.log(10.0), n_experts))
    delay = 0.1 * energy[:, None] * rng.lognormal(0.0, 0.4, (n_experts, len(CATEGORIES)))
    skill = rng.uniform(0.05, 0.95, n_experts)
    labels, probs = [], []
    for _ in range(n_samples):
        n_choices = int(rng.integers(2, 6))
        label = int(rng.integers(0, n_choices))
        labels.append(label)
        rows = []
        for n in range(n_experts):
            alpha = np.full(n_choices, 0.5)
            alpha[label if rng.random() < skill[n] else rng.integers(0, n_choices)] += 3.0
            rows.append(rng.dirichlet(alpha).tolist())
        probs.append(rows)
    noise = rng.normal(0.0, 1.0, (n_samples, n_experts))
    gate = {
        "noise": noise,
        "informative": noise + 4.0 * skill,
        "adversarial": 0.3 * noise - 4.0 * skill,
    }[logits]
    if budget == "tight":
        fits = rng.choice(n_experts, size=max(1, n_experts // 2), replace=False)
        delay_budget = delay[fits].max(axis=0) * 1.001 + 0.01
        energy_budget = float(np.sort(energy[fits])[: int(rng.integers(1, 4))].sum() * 1.2)
    elif budget == "loose":
        delay_budget = delay.max(axis=0) + 0.01
        energy_budget = float(energy.sum() * rng.uniform(0.3, 0.6))
    else:
        delay_budget = delay.max(axis=0) + 1.0
        energy_budget = float(energy.sum() + 1.0)
    return {
        "experts": [
            {
                "id": f"e{n}",
                "energy_j": float(energy[n]),
                "delay_s": {c: float(delay[n, i]) for i, c in enumerate(CATEGORIES)},
            }
            for n in range(n_experts)
        ],
        "budgets": {
            "energy_j": energy_budget,
            "delay_s": {c: float(delay_budget[i]) for i, c in enumerate(CATEGORIES)},
        },
        "aggregation_delay_s": 0.01,
        "top_k": top_k,
        "samples": {"labels": labels, "choice_probs": probs, "gate_logits": gate.tolist()},
    }


def random_instance(rng: np.random.Generator, n_experts: int, **kw: Any) -> SelectionInstance:
    return parse_instance(instance_data(rng, n_experts, int(rng.integers(30, 61)), **kw))


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", "select", *args], capture_output=True, text=True, timeout=60
    )


def write(tmp_path: Path, data: Any, name: str = "instance.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def nonmonotone_instance() -> dict[str, Any]:
    """A sharp expert with a low gate logit and two confidently wrong ones with high logits."""
    good = [0.97, 0.01, 0.01, 0.01]
    bad = [0.05, 0.85, 0.05, 0.05]
    meh = [0.4, 0.2, 0.2, 0.2]
    return {
        "experts": [
            {"id": "loud-1", "energy_j": 1.0, "delay_s": {"math": 0.1}},
            {"id": "sharp", "energy_j": 3.0, "delay_s": {"math": 0.2}},
            {"id": "loud-2", "energy_j": 1.0, "delay_s": {"math": 0.1}},
            {"id": "meh", "energy_j": 0.5, "delay_s": {"math": 0.1}},
        ],
        "budgets": {"energy_j": 100.0, "delay_s": {"math": 1.0}},
        "samples": {
            "labels": [0, 0, 0],
            "choice_probs": [[bad, good, bad, meh]] * 3,
            "gate_logits": [[3.0, -2.0, 3.0, 0.0]] * 3,
        },
    }


def topk_instance(top_k: int | None) -> dict[str, Any]:
    return {
        "experts": [
            {"id": "a", "energy_j": 1.0, "delay_s": {"math": 0.5}},
            {"id": "b", "energy_j": 2.0, "delay_s": {"math": 1.0}},
            {"id": "c", "energy_j": 4.0, "delay_s": {"math": 2.0}},
        ],
        "budgets": {"energy_j": 5.0, "delay_s": {"math": 3.0}},
        "aggregation_delay_s": 0.1,
        "top_k": top_k,
        "samples": {
            "labels": [0, 1],
            "choice_probs": [
                [[0.6, 0.4], [0.9, 0.1], [0.5, 0.5]],
                [[0.3, 0.7], [0.2, 0.8], [0.1, 0.9]],
            ],
            # Sample 0 ranks c > a > b; sample 1 ranks b > c > a.
            "gate_logits": [[1.0, 0.0, 2.0], [0.0, 2.0, 1.0]],
        },
    }
