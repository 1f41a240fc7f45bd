"""MoE² selection solves exactly: branch and bound equals exhaustive search and a brute force
from the definitions, the loss and the lower bound match the definitions, top_k solves exactly."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from controller.selection import Evaluator, parse_instance, search, solve
from controller.selection.search import BranchAndBound, LocalSearch
from tests.controller.selection.instances import (
    instance_data,
    nonmonotone_instance,
    random_instance,
    topk_instance,
)
from tests.controller.selection.reference import brute_force, reference

# ---- branch and bound against exhaustive search ----------------------------------------------


@pytest.mark.parametrize("leaf_sets", [0, search.LEAF_SETS])
def test_moe2_equals_exhaustive_on_200_random_instances(
    leaf_sets: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node by node (leaf_sets 0: the bound must prune) and as shipped (at these sizes most
    subtrees are small enough to be scored in one batch, without bounds)."""
    monkeypatch.setattr(search, "LEAF_SETS", leaf_sets)
    rng = np.random.default_rng(20261123)
    kinds = [
        ("tight", "noise"),
        ("loose", "noise"),
        ("loose", "informative"),
        ("tight", "adversarial"),
        ("loose", "adversarial"),
        ("none", "noise"),
    ]
    pruned = 0
    for i in range(200):
        budget, logits = kinds[i % len(kinds)]
        n = int(rng.integers(4, 15)) if budget != "none" else int(rng.integers(4, 12))
        instance = random_instance(rng, n, budget=budget, logits=logits)
        fast = solve(instance, "moe2")
        slow = solve(instance, "exhaustive")
        assert fast.feasible and slow.feasible
        assert fast.selected == slow.selected, (i, fast, slow)
        assert fast.loss is not None and slow.loss is not None
        assert abs(fast.loss - slow.loss) <= 1e-9
        assert fast.accuracy == slow.accuracy and fast.energy_j == slow.energy_j
        assert fast.optimal and slow.optimal
        assert fast.subsets_evaluated <= slow.subsets_evaluated, (i, fast, slow)
        pruned += fast.subsets_evaluated < slow.subsets_evaluated
    if leaf_sets == 0:
        assert pruned > 100  # the bound does prune, not only the budgets


def test_exhaustive_matches_a_brute_force_from_the_definitions() -> None:
    rng = np.random.default_rng(7)
    for i in range(12):
        budget = ("tight", "loose", "none")[i % 3]
        instance = random_instance(rng, int(rng.integers(3, 7)), budget=budget)
        expected = brute_force(instance)
        assert expected is not None
        result = solve(instance, "moe2")
        assert result.selected == expected[1]
        assert result.loss == pytest.approx(expected[0], abs=1e-9)


def test_a_non_monotone_loss_still_gives_the_exact_optimum() -> None:
    instance = parse_instance(nonmonotone_instance())
    result = solve(instance, "moe2")
    assert result.selected == ["sharp"]
    assert result.loss == pytest.approx(-math.log(0.97))
    exhaustive = solve(instance, "exhaustive")
    assert exhaustive.selected == ["sharp"]
    assert exhaustive.monotonicity_violations and exhaustive.monotonicity_violations > 0
    # Greedy cannot improve on the best single expert here either, but the full set is far worse.
    full = Evaluator(instance).loss([0, 1, 2, 3])
    assert full > result.loss + 1.0


def test_adversarial_gates_give_the_exhaustive_optimum() -> None:
    rng = np.random.default_rng(11)
    small = 0
    for _ in range(25):
        instance = random_instance(
            rng, int(rng.integers(5, 11)), budget="none", logits="adversarial"
        )
        fast, slow = solve(instance, "moe2"), solve(instance, "exhaustive")
        assert fast.selected == slow.selected and fast.loss == slow.loss
        small += len(fast.selected) < len(instance.experts)
    assert small > 0  # the optimum is not the largest feasible set


def test_duplicate_experts_tie_break_to_fewer_then_lower_index() -> None:
    data = nonmonotone_instance()
    data["experts"].append({"id": "sharp-copy", "energy_j": 3.0, "delay_s": {"math": 0.2}})
    for s in range(3):
        data["samples"]["choice_probs"][s] = [
            *data["samples"]["choice_probs"][s],
            [0.97, 0.01, 0.01, 0.01],
        ]
        data["samples"]["gate_logits"][s] = [*data["samples"]["gate_logits"][s], -2.0]
    instance = parse_instance(data)
    for algorithm in ("moe2", "exhaustive", "best_single", "greedy"):
        assert solve(instance, algorithm).selected == ["sharp"], algorithm


def test_extreme_logits_are_evaluated_stably() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        data = instance_data(rng, 6, 20, budget="loose")
        logits = np.asarray(data["samples"]["gate_logits"]) * 400.0
        data["samples"]["gate_logits"] = logits.tolist()
        instance = parse_instance(data)
        assert not Evaluator(instance).stable
        fast, slow = solve(instance, "moe2"), solve(instance, "exhaustive")
        assert fast.selected == slow.selected
        ids = [int(e[1:]) for e in fast.selected]
        assert fast.loss == pytest.approx(reference(instance, ids)[0], abs=1e-9)


# ---- the loss and the bound -------------------------------------------------------------------


def test_loss_accuracy_and_costs_match_the_definitions() -> None:
    rng = np.random.default_rng(5)
    for top_k in (None, 1, 2):
        instance = random_instance(rng, 6, budget="none", top_k=top_k)
        ev = Evaluator(instance)
        for size in (1, 2, 3, 6):
            for ids in itertools.islice(itertools.combinations(range(6), size), 5):
                loss, accuracy, energy, delays = reference(instance, list(ids))
                assert ev.loss(ids) == pytest.approx(loss, abs=1e-12)
                assert ev.accuracy(ids) == pytest.approx(accuracy)
                assert ev.energy_j(ids) == pytest.approx(energy)
                assert ev.delay_s(ids).tolist() == pytest.approx(list(delays.values()))


def test_lower_bound_holds_for_every_reachable_set() -> None:
    rng = np.random.default_rng(17)
    for trial in range(60):
        n = int(rng.integers(2, 8))
        logits = ("noise", "informative", "adversarial")[trial % 3]
        ev = Evaluator(random_instance(rng, n, budget="none", logits=logits))
        assignment = rng.integers(0, 3, n)  # 0 out, 1 forced, 2 undecided
        forced = [i for i in range(n) if assignment[i] == 1]
        undecided = [i for i in range(n) if assignment[i] == 2]
        if not forced and not undecided:
            continue
        bound = ev.lower_bound(forced, undecided)
        best = math.inf
        for size in range(len(undecided) + 1):
            for extra in itertools.combinations(undecided, size):
                chosen = sorted([*forced, *extra])
                if chosen:
                    best = min(best, ev.loss(chosen))
        assert bound <= best + 1e-12, (trial, forced, undecided, bound, best)
        if not undecided:
            assert bound == pytest.approx(best, abs=1e-12)  # tight at a leaf
        if not forced:
            gold = ev.gold[:, undecided].max(axis=1)
            assert bound == pytest.approx(float(-np.log(np.maximum(1e-12, gold)).mean()))


def test_a_bound_that_assumes_monotone_losses_would_miss_the_optimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The comparison with exhaustive search catches a bound that is only valid for monotone L
    (the incumbent's local search is switched off, and subtrees are never scored in one batch, so
    the branch and bound with its bounds does the work)."""
    monkeypatch.setattr(search, "LEAF_SETS", 0)
    rng = np.random.default_rng(41)
    instances = [random_instance(rng, int(rng.integers(5, 10)), budget="none") for _ in range(12)]
    exact = [solve(instance, "moe2").selected for instance in instances]

    def largest_set_loss(
        self: BranchAndBound, cands: Any, num: Any, den: Any, q: Any, rest: Any, energy: Any
    ) -> Any:
        grown_num = num + rest.astype(float) @ self.ev.weighted_gold[:, cands].T
        grown_den = den + rest.astype(float) @ self.ev.weights[:, cands].T
        return -np.log(np.maximum(1e-12, grown_num / grown_den)).mean(axis=1)

    def best_single(self: LocalSearch, single_loss: dict[int, float], deadline: Any) -> Any:
        return (min(single_loss, key=lambda n: (single_loss[n], n)),)

    monkeypatch.setattr(BranchAndBound, "_bounds_of", largest_set_loss)
    monkeypatch.setattr(LocalSearch, "greedy", best_single)
    monkeypatch.setattr(LocalSearch, "improve", lambda self, start, deadline: start)
    wrong = [solve(i, "moe2").selected != e for i, e in zip(instances, exact, strict=True)]
    assert sum(wrong) > 0


# ---- top_k ------------------------------------------------------------------------------------


def test_top_k_energy_follows_the_experts_actually_run() -> None:
    ev = Evaluator(parse_instance(topk_instance(1)))
    # k = 1 on {a, b, c}: sample 0 runs c (4 J), sample 1 runs b (2 J): 3 J per query on average.
    assert ev.energy_j([0, 1, 2]) == pytest.approx(3.0)
    assert ev.delay_s([0, 1, 2]).tolist() == pytest.approx([2.1])  # c ran somewhere
    # {a, b}: sample 0 runs a (1 J), sample 1 runs b (2 J); delays: b is the slowest run.
    assert ev.energy_j([0, 1]) == pytest.approx(1.5)
    assert ev.delay_s([0, 1]).tolist() == pytest.approx([1.1])
    # The mixture of one expert: sample 0 -> a's 0.6 on label 0; sample 1 -> b's 0.8 on label 1.
    assert ev.loss([0, 1]) == pytest.approx(-(math.log(0.6) + math.log(0.8)) / 2)
    # A singleton or a set no larger than k runs whole.
    assert ev.energy_j([2]) == pytest.approx(4.0)

    ev2 = Evaluator(parse_instance(topk_instance(2)))
    # k = 2 on {a, b, c}: sample 0 runs c, a (5 J); sample 1 runs b, c (6 J).
    assert ev2.energy_j([0, 1, 2]) == pytest.approx(5.5)
    w0 = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()  # a, c in sample 0
    w1 = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()  # b, c in sample 1
    expected = -(math.log(w0 @ [0.6, 0.5]) + math.log(w1 @ [0.8, 0.9])) / 2
    assert ev2.loss([0, 1, 2]) == pytest.approx(expected)


def test_top_k_solves_exactly_and_the_full_set_can_fit_where_its_sum_does_not() -> None:
    instance = parse_instance(topk_instance(1))
    result = solve(instance, "moe2")
    assert result.optimal and result.feasible
    assert result.selected == solve(instance, "exhaustive").selected
    expected = brute_force(instance)
    assert expected is not None and result.selected == expected[1]
    # Sum of energies of {a, b, c} is 7 J > 5 J, yet under k = 1 it costs 3 J a query.
    assert Evaluator(instance).fits([0, 1, 2])
    # top_k at or above the number of experts drops nobody: the plain problem.
    plain = solve(parse_instance(topk_instance(None)), "moe2")
    assert solve(parse_instance(topk_instance(3)), "moe2").model_dump(
        exclude={"runtime_s"}
    ) == plain.model_dump(exclude={"runtime_s"})
    rng = np.random.default_rng(23)
    for i in range(15):
        k = int(rng.integers(1, 4))
        data = instance_data(rng, int(rng.integers(3, 8)), 25, budget=("tight", "loose")[i % 2])
        data["top_k"] = k
        instance = parse_instance(data)
        fast, slow = solve(instance, "moe2"), solve(instance, "exhaustive")
        assert fast.selected == slow.selected and fast.loss == slow.loss
        if fast.feasible:
            expected = brute_force(instance)
            assert expected is not None and fast.selected == expected[1]
