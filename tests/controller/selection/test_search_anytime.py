"""The anytime moe2 search: exact when it completes, a true lower bound when it stops early, a
time limit that holds, the solver it replaces matched, and live re-plans of a 64-expert fleet."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.selection import SelectionInstance, parse_instance, solve
from controller.selection import search as search_module
from controller.selection.legacy import legacy_moe2
from controller.selection.live import LiveSelection
from controller.selection.loss import Evaluator
from controller.selection.search import AnytimeSearch, BranchAndBound, Tracker
from messages.budgets import Budgets
from tests.controller.selection.instances import instance_data, moe2, random_instance, write


def test_a_completed_search_equals_the_exhaustive_optimum() -> None:
    rng = np.random.default_rng(20261202)
    for i in range(60):
        budget = ("tight", "loose", "none")[i % 3]
        logits = ("noise", "informative", "adversarial")[i % 4 % 3]
        instance = random_instance(rng, int(rng.integers(3, 13)), budget=budget, logits=logits)
        result = solve(instance, "moe2", time_limit_s=30.0)
        exhaustive = solve(instance, "exhaustive")
        assert result.optimal and result.gap == 0.0 and result.bound == result.loss
        assert result.selected == exhaustive.selected, (i, result, exhaustive)
        assert result.loss == exhaustive.loss
        assert exhaustive.gap == 0.0 and exhaustive.bound == exhaustive.loss


@pytest.mark.parametrize(
    ("leaf_sets", "group_sets", "min_stops"),
    [
        (0, 0, 1000),
        (63, 0, 1000),
        (63, 63, 1000),
        (4095, 0, 100),
        (4095, 4095, 20),
        (search_module.LEAF_SETS, search_module.GROUP_SETS, 10),  # the defaults
    ],
)
def test_the_bound_is_a_true_lower_bound_wherever_the_search_stops(
    leaf_sets: int, group_sets: int, min_stops: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after every node (a deadline already past), up to N = 14; node by node, with
    small subtrees scored in batches one child at a time, and several children per batch (the
    defaults last; larger batches leave fewer places to stop)."""
    monkeypatch.setattr(search_module, "LEAF_SETS", leaf_sets)
    monkeypatch.setattr(search_module, "GROUP_SETS", group_sets)
    rng = np.random.default_rng(14)
    stops = 0
    for i in range(8):
        n = (10, 12, 14, 14)[i % 4]
        instance = random_instance(rng, n, budget=("loose", "none")[i % 2], logits="noise")
        optimum = solve(instance, "exhaustive")
        assert optimum.loss is not None
        search = AnytimeSearch(Evaluator(instance))
        steps = 0
        while not search.run(time.perf_counter()) and steps < 400:
            bound = search.lower_bound()
            assert bound is not None and bound <= optimum.loss + 1e-12, (i, steps, bound)
            assert search.tracker.best >= optimum.loss - 1e-12
            steps += 1
        stops += steps
        search.run(None)
        assert search.lower_bound() == pytest.approx(optimum.loss, abs=1e-12)
    assert stops > min_stops  # the searches were stopped many times on the way


@pytest.mark.parametrize(
    ("leaf_sets", "group_sets"), [(0, 0), (7, 0), (7, 63), (63, 63), (4095, 0), (4095, 4095)]
)
def test_leaf_batches_keep_the_exhaustive_optimum(
    leaf_sets: int, group_sets: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small subtrees scored in batches (any threshold, 0: none; one child per batch or several
    children's subtrees in one) give the same set, the same loss and never more evaluations
    than exhaustive search."""
    monkeypatch.setattr(search_module, "LEAF_SETS", leaf_sets)
    monkeypatch.setattr(search_module, "GROUP_SETS", group_sets)
    rng = np.random.default_rng(1202)
    for i in range(40):
        budget = ("tight", "loose", "none")[i % 3]
        logits = ("noise", "informative", "adversarial")[i % 4 % 3]
        instance = random_instance(rng, int(rng.integers(3, 15)), budget=budget, logits=logits)
        result = solve(instance, "moe2")
        exhaustive = solve(instance, "exhaustive")
        assert result.optimal and result.selected == exhaustive.selected, (i, result, exhaustive)
        assert result.loss == exhaustive.loss
        assert result.subsets_evaluated <= exhaustive.subsets_evaluated, (i, result, exhaustive)


def test_the_floor_is_skipped_only_when_no_gold_probability_is_near_it() -> None:
    rng = np.random.default_rng(5)
    data = instance_data(rng, 4, 20)
    assert not Evaluator(parse_instance(data)).floor_needed
    row = data["samples"]["choice_probs"][3][2]
    row[:] = [1.0 - (len(row) - 1) * 1e-13] + [1e-13] * (len(row) - 1)
    data["samples"]["labels"][3] = 1  # expert 2's gold probability there: 1e-13
    assert Evaluator(parse_instance(data)).floor_needed


def test_every_child_bound_is_below_the_best_set_of_its_subtree() -> None:
    """The bounds of a node's children (prefix, set-level modular and, though off by default,
    tangent and energy-aware) against brute force over every reachable set, N <= 14."""
    rng = np.random.default_rng(314)
    checked = 0
    for i in range(24):
        budget = ("loose", "none", "tight")[i % 3]
        logits = ("noise", "informative", "adversarial")[i % 4 % 3]
        ev = Evaluator(random_instance(rng, int(rng.integers(4, 15)), budget=budget, logits=logits))
        singles = [n for n in range(ev.n_experts) if ev.fits([n])]
        if len(singles) < 2:
            continue
        single_loss = {n: ev.loss([n]) for n in singles}
        bnb = BranchAndBound(
            ev, Tracker(ev), single_loss, energy_bound=True, modular_bound=True, tangent_bound=True
        )
        order = bnb.order
        # Every feasible set as a bitmask over positions in the search order, and its loss.
        masks, losses = [], []
        for size in range(1, len(order) + 1):
            for chosen in itertools.combinations(range(len(order)), size):
                idx = sorted(int(order[p]) for p in chosen)
                if ev.fits(idx):
                    masks.append(sum(1 << p for p in chosen))
                    losses.append(ev.loss(idx))
        bits = np.asarray(masks, dtype=np.int64)
        loss_of = np.asarray(losses)
        for _ in range(6):
            # A node: a random forced set F (positions), its candidates those after F's last.
            picked = np.flatnonzero(rng.random(len(order)) < 0.25)
            last = int(picked[-1]) if len(picked) else -1
            forced = [int(order[p]) for p in picked]
            if not ev.fits(sorted(forced)) and forced:
                continue
            positions = np.arange(last + 1, len(order))
            e_forced = float(ev.energy[forced].sum()) if forced else 0.0
            cands = order[positions]
            energy = e_forced + ev.energy[cands]
            keep = energy <= bnb.limit_j
            cands, positions, energy = cands[keep], positions[keep], energy[keep]
            if not len(cands):
                continue
            rest = np.triu(energy[:, None] + ev.energy[cands][None, :] <= bnb.limit_j, k=1)
            num, den = ev.mixture_sums(forced) if forced else (np.zeros(ev.n_samples),) * 2
            q_forced = ev.gold[:, forced].max(axis=1) if forced else np.zeros(ev.n_samples)
            bounds = bnb._bounds_of(
                cands,
                num[None, :] + ev.weighted_gold[:, cands].T,
                den[None, :] + ev.weights[:, cands].T,
                np.maximum(q_forced[None, :], ev.gold[:, cands].T),
                rest,
                energy,
            )
            base = sum(1 << int(p) for p in picked)
            for j, p in enumerate(positions):
                child = base | (1 << int(p))
                region = child | sum(1 << int(q) for q in positions[rest[j]])
                inside = ((bits & child) == child) & ((bits & ~region) == 0)
                best = loss_of[inside].min()
                assert bounds[j] <= best + 1e-9, (i, forced, int(cands[j]), bounds[j], best)
                checked += 1
    assert checked > 300


def test_the_bound_of_a_timed_out_solve_is_below_the_optimum() -> None:
    rng = np.random.default_rng(99)
    for _ in range(4):
        instance = random_instance(rng, 14, budget="none")
        optimum = solve(instance, "exhaustive").loss
        assert optimum is not None
        result = solve(instance, "moe2", time_limit_s=0.005)
        assert result.bound is not None and result.gap is not None
        assert result.bound <= optimum + 1e-12 and result.loss is not None
        assert result.loss >= optimum - 1e-12
        assert result.gap == pytest.approx((result.loss - result.bound) / result.loss)


def large_instance(n: int, seed: int = 0) -> SelectionInstance:
    """Loose budgets at fleet scale: far too many feasible sets to finish in a fraction of 1 s."""
    return parse_instance(instance_data(np.random.default_rng(seed), n, 250, budget="loose"))


def test_a_short_limit_returns_a_feasible_set_with_a_gap() -> None:
    instance = large_instance(64)
    greedy = solve(instance, "greedy")
    result = solve(instance, "moe2", time_limit_s=0.1)
    assert result.runtime_s <= 0.1 + 0.25  # one part of a batch may run past the limit
    assert result.feasible and result.selected and not result.optimal
    assert result.gap is not None and result.gap > 0
    assert result.bound is not None and result.loss is not None and result.bound < result.loss
    assert result.energy_j is not None and result.energy_j <= instance.budgets.energy_j * 1.000001
    assert greedy.loss is not None and result.loss <= greedy.loss + 1e-9


def test_the_search_matches_the_solver_it_replaces() -> None:
    """Same optimum, same tie-breaking, wherever the old branch and bound finishes."""
    rng = np.random.default_rng(5)
    for i in range(30):
        data = instance_data(rng, int(rng.integers(8, 19)), 60, budget=("tight", "loose")[i % 2])
        instance = parse_instance(data)
        old = legacy_moe2(instance, time.perf_counter() + 20)
        assert old is not None
        new = solve(instance, "moe2")
        assert new.selected == old.selected and new.loss == pytest.approx(old.loss, abs=1e-12)


def test_cli_time_limit(tmp_path: Path) -> None:
    path = write(tmp_path, instance_data(np.random.default_rng(3), 40, 150, budget="loose"))
    run = moe2("--instance", str(path), "--json", "--time-limit", "0.05")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["feasible"] and out["optimal"] is False
    assert out["gap"] > 0 and out["bound"] < out["loss"]
    table = moe2("--instance", str(path), "--time-limit", "0.05")
    assert table.returncode == 0 and "gap" in table.stdout
    bad = moe2("--instance", str(path), "--time-limit", "0")
    assert bad.returncode == 2 and "--time-limit must be positive" in bad.stderr


# ---- the live controller's selection ----------------------------------------------------------


@dataclass(frozen=True)
class _Cost:
    energy_j: float
    delay_s: dict[str, float]


@dataclass(frozen=True)
class _Gate:
    expert_keys: list[str]


class FakeGatedProfile:
    """What LiveSelection uses of a GatedProfile: costs, the gate's keys, instance()."""

    def __init__(self, n_experts: int, seed: int = 0) -> None:
        data = instance_data(np.random.default_rng(seed), n_experts, 250, budget="loose")
        self.data = data
        keys = [f"e{n}@a{n // 4}" for n in range(n_experts)]
        self.gate = _Gate(keys)
        self.costs = {
            key: _Cost(e["energy_j"], e["delay_s"])
            for key, e in zip(keys, data["experts"], strict=True)
        }

    def instance(
        self, split: str, energy_j: float, delay_s: dict[str, float], **kw: Any
    ) -> SelectionInstance:
        raw = json.loads(json.dumps(self.data))
        for key, expert in zip(self.gate.expert_keys, raw["experts"], strict=True):
            expert["id"] = key
        raw["budgets"] = {"energy_j": energy_j, "delay_s": delay_s}
        raw["top_k"] = kw.get("top_k")
        raw["aggregation_delay_s"] = kw.get("aggregation_delay_s", 0.0)
        return parse_instance(raw)


def test_live_selection_replans_a_64_expert_fleet_within_its_limit() -> None:
    gated = FakeGatedProfile(64)
    live = LiveSelection(gated, aggregation_delay_s=0.01, time_limit_s=0.5)  # type: ignore[arg-type]
    budgets = Budgets(energy_j=gated.data["budgets"]["energy_j"], delay_s={})
    online = set(gated.gate.expert_keys)
    started = time.perf_counter()
    plan = live.solve(budgets, online)
    solve_s = time.perf_counter() - started
    assert plan.feasible and plan.runtime_s <= 0.5 + 0.25
    assert solve_s <= 0.5 + 1.5  # building the 64 x 250 instance is outside the solver's limit
    assert not plan.optimal and plan.gap is not None and plan.gap > 0
    assert plan.bound is not None and plan.loss is not None and plan.bound <= plan.loss
    # Background slices resume the same search: any result they return is better or proven.
    best = plan
    for _ in range(3):
        better = live.improve(budgets, online, best, time_limit_s=0.3)
        if better is not None:
            assert better.loss is not None and best.loss is not None
            assert better.loss < best.loss or better.optimal
            assert better.bound is not None and better.bound <= better.loss
            best = better
    # Other budgets: a fresh search seeded with the previous plan's experts.
    tighter = Budgets(energy_j=budgets.energy_j * 0.9, delay_s={})
    other = live.improve(tighter, online, plan, time_limit_s=0.2)
    assert other is None or (other.feasible and other.loss is not None)


def test_live_improve_on_a_proven_plan_is_none() -> None:
    gated = FakeGatedProfile(8, seed=2)
    live = LiveSelection(gated, time_limit_s=5.0)  # type: ignore[arg-type]
    budgets = Budgets(energy_j=gated.data["budgets"]["energy_j"], delay_s={})
    plan = live.solve(budgets, set(gated.gate.expert_keys))
    assert plan.optimal and plan.gap == 0.0
    assert live.improve(budgets, set(gated.gate.expert_keys), plan, time_limit_s=0.1) is None
    with pytest.raises(ValueError, match="positive"):
        LiveSelection(gated, time_limit_s=0.0)  # type: ignore[arg-type]
