"""An independent reference for the selection tests: a set's loss, accuracy, energy and delays
computed from the definitions one sample at a time, and the optimum by enumerating every set."""

from __future__ import annotations

import itertools
import math

import numpy as np

from controller.selection import SelectionInstance


def reference(
    instance: SelectionInstance, ids: list[int]
) -> tuple[float, float, float, dict[str, float]]:
    """Loss, accuracy, energy and delays of a set from the definitions, one sample at a time."""
    samples = instance.samples
    k = instance.top_k
    losses, hits, energies = [], [], []
    run_anywhere: set[int] = set()
    for s, label in enumerate(samples.labels):
        logits = samples.gate_logits[s]
        run = sorted(ids, key=lambda n: (-logits[n], n))
        run = run[:k] if k is not None else run
        run_anywhere.update(run)
        top = max(logits[n] for n in run)
        weights = {n: math.exp(logits[n] - top) for n in run}
        total = sum(weights.values())
        n_choices = len(samples.choice_probs[s][0])
        mixture = [
            sum(weights[n] * samples.choice_probs[s][n][c] for n in run) / total
            for c in range(n_choices)
        ]
        losses.append(-math.log(max(1e-12, mixture[label])))
        hits.append(max(range(n_choices), key=lambda c: (mixture[c], -c)) == label)
        energies.append(sum(instance.experts[n].energy_j for n in run))
    delays = {
        c: max(instance.experts[n].delay_s[c] for n in run_anywhere) + instance.aggregation_delay_s
        for c in instance.budgets.delay_s
    }
    return float(np.mean(losses)), float(np.mean(hits)), float(np.mean(energies)), delays


def within_budget(instance: SelectionInstance, energy_j: float, delay_s: dict[str, float]) -> bool:
    b = instance.budgets
    return energy_j <= b.energy_j * (1 + 1e-9) + 1e-12 and all(
        delay_s[c] <= limit * (1 + 1e-9) + 1e-12 for c, limit in b.delay_s.items()
    )


def brute_force(instance: SelectionInstance) -> tuple[float, list[str]] | None:
    """The optimum by enumerating every subset and the stated tie-break, from the reference."""
    best: tuple[float, int, float, tuple[int, ...]] | None = None
    n = len(instance.experts)
    for size in range(1, n + 1):
        for ids in itertools.combinations(range(n), size):
            loss, _, energy, delays = reference(instance, list(ids))
            if within_budget(instance, energy, delays):
                key = (loss, size, energy, ids)
                if (
                    best is None
                    or loss < best[0] - 1e-9
                    or (abs(loss - best[0]) <= 1e-9 and key[1:] < best[1:])
                ):
                    best = key
    if best is None:
        return None
    return best[0], [instance.experts[i].id for i in best[3]]
