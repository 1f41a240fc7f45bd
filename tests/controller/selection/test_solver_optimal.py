"""MoE² selection: branch and bound equals exhaustive search, the bound holds, bad input fails."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.selection import (
    ALGORITHMS,
    Evaluator,
    SelectionInstance,
    SelectionInstanceError,
    load_instance,
    parse_instance,
    search,
    solve,
)
from controller.selection.search import BranchAndBound, LocalSearch

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


# ---- an independent reference -----------------------------------------------------------------


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


# ---- baselines --------------------------------------------------------------------------------


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


# ---- infeasible instances and bad input through the CLI --------------------------------------


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", "select", *args], capture_output=True, text=True, timeout=60
    )


def write(tmp_path: Path, data: Any, name: str = "instance.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_infeasible_instance_is_reported_and_exits_3(tmp_path: Path) -> None:
    data = topk_instance(None)
    data["budgets"]["energy_j"] = 0.5
    instance = parse_instance(data)
    for algorithm in ALGORITHMS:
        result = solve(instance, algorithm)
        assert not result.feasible and result.selected == []
        assert result.loss is None and result.accuracy is None
    run = moe2("--instance", str(write(tmp_path, data)), "--json")
    assert run.returncode == 3, run.stderr
    out = json.loads(run.stdout)
    assert out["feasible"] is False and out["selected"] == [] and out["loss"] is None
    assert moe2("--instance", str(write(tmp_path, data))).returncode == 3


def test_cli_prints_the_result_object(tmp_path: Path) -> None:
    path = write(tmp_path, nonmonotone_instance())
    run = moe2("--instance", str(path), "--json", "--algorithm", "exhaustive")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    keys = {
        "selected",
        "loss",
        "accuracy",
        "energy_j",
        "delay_s",
        "feasible",
        "optimal",
        "subsets_evaluated",
        "algorithm",
        "runtime_s",
    }
    assert keys <= set(out)
    assert out["selected"] == ["sharp"] and out["optimal"] is True
    assert out["algorithm"] == "exhaustive"
    table = moe2("--instance", str(path))
    assert table.returncode == 0 and "sharp" in table.stdout
    assert load_instance(path) == parse_instance(nonmonotone_instance())


def _bad(mutate: Any) -> dict[str, Any]:
    data = topk_instance(None)
    mutate(data)
    return data


BAD_INSTANCES: dict[str, tuple[Any, str]] = {
    "unknown top-level field": (_bad(lambda d: d.update(bogus=1)), "bogus: Extra inputs"),
    "unknown expert field": (
        _bad(lambda d: d["experts"][0].update(power_w=3)),
        "experts.0.power_w: Extra inputs",
    ),
    "negative energy": (
        _bad(lambda d: d["experts"][1].update(energy_j=-1.0)),
        "experts.1.energy_j",
    ),
    "negative delay budget": (
        _bad(lambda d: d["budgets"]["delay_s"].update(math=-0.1)),
        "budgets.delay_s.math",
    ),
    "NaN energy": (
        json.dumps(topk_instance(None)).replace('"energy_j": 2.0', '"energy_j": NaN'),
        "experts.1.energy_j: Input should be a finite number",
    ),
    "infinite budget": (
        json.dumps(topk_instance(None)).replace('"energy_j": 5.0', '"energy_j": Infinity'),
        "budgets.energy_j: Input should be a finite number",
    ),
    "missing budget category": (
        _bad(lambda d: d["budgets"]["delay_s"].update(chat=1.0)),
        "no delay_s for budget category 'chat'",
    ),
    "duplicate expert ids": (
        _bad(lambda d: d["experts"][2].update(id="a")),
        "duplicate expert id 'a'",
    ),
    "row not summing to 1": (
        _bad(lambda d: d["samples"]["choice_probs"][1].__setitem__(0, [0.3, 0.6])),
        "samples.choice_probs[1][0]: probabilities sum to 0.9",
    ),
    "negative probability": (
        _bad(lambda d: d["samples"]["choice_probs"][0].__setitem__(2, [1.5, -0.5])),
        "samples.choice_probs[0][2]: negative probability",
    ),
    "missing expert row": (
        _bad(lambda d: d["samples"]["choice_probs"][0].pop()),
        "samples.choice_probs[0]: 2 rows for 3 experts",
    ),
    "wrong number of logits": (
        _bad(lambda d: d["samples"]["gate_logits"][1].append(0.0)),
        "samples.gate_logits[1]: 4 logits for 3 experts",
    ),
    "label out of range": (
        _bad(lambda d: d["samples"]["labels"].__setitem__(1, 2)),
        "samples.labels[1]: label 2 out of range for 2 choices",
    ),
    "sample count mismatch": (
        _bad(lambda d: d["samples"]["labels"].append(0)),
        "samples.choice_probs: 2 samples",
    ),
    "no experts": (_bad(lambda d: d.update(experts=[])), "experts: List should have at least 1"),
    "invalid JSON": ('{"experts": [', "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INSTANCES))
def test_bad_instances_are_clean_errors(case: str, tmp_path: Path) -> None:
    data, needle = BAD_INSTANCES[case]
    path = write(tmp_path, data)
    with pytest.raises(SelectionInstanceError, match="invalid selection instance|not valid JSON"):
        load_instance(path)
    run = moe2("--instance", str(path))
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ")
    assert needle in run.stderr, run.stderr


def test_missing_file_and_unknown_algorithm_are_clean_errors(tmp_path: Path) -> None:
    run = moe2("--instance", str(tmp_path / "missing.json"))
    assert run.returncode == 2 and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr
    path = write(tmp_path, topk_instance(None))
    run = moe2("--instance", str(path), "--algorithm", "simulated-annealing")
    assert run.returncode == 2 and "unknown algorithm 'simulated-annealing'" in run.stderr
    assert "Traceback" not in run.stderr
    with pytest.raises(ValueError, match="unknown algorithm"):
        solve(parse_instance(topk_instance(None)), "simulated-annealing")
