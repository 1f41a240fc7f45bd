"""The baseline selection algorithms: feasible sets within the budget, uniform weights scored as
such, budgets without delay categories, the random one seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.selection import ALGORITHMS, Evaluator, parse_instance, solve
from tests.controller.selection.instances import nonmonotone_instance, random_instance
from tests.controller.selection.reference import reference, within_budget


def test_baselines_return_feasible_sets_within_budget() -> None:
    rng = np.random.default_rng(29)
    for i in range(20):
        top_k = None if i % 4 else 2
        instance = random_instance(
            rng, int(rng.integers(4, 10)), budget=("tight", "loose")[i % 2], top_k=top_k
        )
        optimum = solve(instance, "exhaustive")
        for algorithm in ALGORITHMS:
            result = solve(instance, algorithm, seed=i)
            assert result.feasible and result.selected, algorithm
            assert result.algorithm == algorithm
            ids = [int(e[1:]) for e in result.selected]
            assert ids == sorted(ids)
            loss, accuracy, energy, delays = reference(instance, ids)
            assert within_budget(instance, energy, delays), (algorithm, result)
            assert result.energy_j == pytest.approx(energy)
            assert result.delay_s == pytest.approx(delays)
            assert result.loss is not None and optimum.loss is not None
            if algorithm == "uniform":
                assert result.selected == optimum.selected
                assert not result.optimal
            else:
                assert result.loss == pytest.approx(loss, abs=1e-9)
                assert result.accuracy == pytest.approx(accuracy)
                assert result.loss >= optimum.loss - 1e-9
            if algorithm == "best_single":
                assert len(result.selected) == 1


def test_uniform_scores_the_chosen_set_with_equal_weights() -> None:
    rng = np.random.default_rng(37)
    for _ in range(5):
        instance = random_instance(rng, 8, budget="loose", logits="informative")
        chosen = solve(instance, "moe2")
        uniform = solve(instance, "uniform")
        assert uniform.selected == chosen.selected
        ids = [int(e[1:]) for e in chosen.selected]
        equal = Evaluator(instance, uniform=True)
        assert uniform.loss == pytest.approx(equal.loss(ids))
        mixture = instance.samples.choice_probs
        expected = np.mean(
            [
                -math.log(max(1e-12, float(np.mean([mixture[s][n][y] for n in ids]))))
                for s, y in enumerate(instance.samples.labels)
            ]
        )
        assert uniform.loss == pytest.approx(expected)
        assert uniform.energy_j == chosen.energy_j
        assert uniform.subsets_evaluated == chosen.subsets_evaluated + 1


def test_budgets_without_delay_categories() -> None:
    data = nonmonotone_instance()
    data["budgets"] = {"energy_j": 3.5}
    result = solve(parse_instance(data), "moe2")
    assert result.selected == ["sharp"] and result.delay_s == {}
    data["budgets"] = {"energy_j": 100.0, "delay_s": {"math": 0.15}}
    data["aggregation_delay_s"] = 0.1  # nobody fits once aggregation is added
    assert not solve(parse_instance(data), "moe2").feasible


def test_random_is_seeded() -> None:
    instance = random_instance(np.random.default_rng(31), 10, budget="loose")
    runs = {tuple(solve(instance, "random", seed=s).selected) for s in range(8)}
    assert solve(instance, "random", seed=3).selected == solve(instance, "random", seed=3).selected
    assert len(runs) > 1
