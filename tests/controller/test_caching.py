"""SlimCaching: the evaluator by hand, MILP = brute force, guarantees on random instances, bad
input, traces and the generator."""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.caching import (
    ALGORITHMS,
    CachingAlgorithmError,
    CachingInstanceError,
    PlacementError,
    compile_instance,
    decomposition,
    evaluate_placement,
    load_instance,
    parse_instance,
    solve,
)
from controller.caching.compiled import CompiledInstance
from controller.caching.decomposition import default_step, successive_decomposition, to_units
from controller.caching.greedy import greedy_k1
from controller.caching.knapsack import Curve, _frontier, pareto, solve_dense, solve_maxconv
from controller.caching.latency import expected_latency, nothing_cached_latency, saving
from controller.caching.random_instance import random_instance, random_instance_data
from controller.caching.solver import solve_placement
from controller.caching.traces import (
    PRESETS,
    TraceCounts,
    TraceError,
    activation_probabilities,
    generate_counts,
    generate_instance,
    generate_requests,
    parse_trace_lines,
    preset,
    read_trace,
    write_trace,
)

ONE_MINUS_1_E = 1 - 1 / math.e


def tiny(**changes: Any) -> dict[str, Any]:
    """Two servers, one user (weight 2), one layer with experts a and b, K = 2."""
    data: dict[str, Any] = {
        "top_k": 2,
        "servers": [{"id": "s0", "capacity": 2.0}, {"id": "s1", "capacity": 1.0}],
        "users": [
            {
                "id": "u",
                "weight": 2.0,
                "latency_s": {"s0": 0.1, "s1": 0.05},
                "fallback_latency_s": 1.0,
            }
        ],
        "layers": [
            {
                "experts": [{"id": "a", "size": 1.0}, {"id": "b", "size": 1.0}],
                "activations": {
                    "u": [{"experts": ["a", "b"], "prob": 0.6}, {"experts": ["a"], "prob": 0.4}]
                },
            }
        ],
    }
    data.update(changes)
    return data


def latency_of(data: dict[str, Any], placement: dict[str, list[list[Any]]]) -> float:
    return evaluate_placement(parse_instance(data), placement).expected_latency_s


# ---- the evaluator, by hand -------------------------------------------------------------------


def test_expected_latency_by_hand() -> None:
    data = tiny()
    # nothing cached: 2 * (0.6 * 1.0 + 0.4 * 1.0)
    assert latency_of(data, {}) == pytest.approx(2.0)
    # a on s0, b on s1: {a, b} waits for a (0.1); {a} = 0.1
    assert latency_of(data, {"s0": [[0, "a"]], "s1": [[0, "b"]]}) == pytest.approx(0.2)
    # a on s1 only: {a, b} waits for the fallback of b; {a} = 0.05
    assert latency_of(data, {"s1": [[0, "a"]]}) == pytest.approx(2 * (0.6 * 1.0 + 0.4 * 0.05))
    # a on both: the fastest copy serves it
    both = {"s0": [[0, "a"], [0, "b"]], "s1": [[0, "a"]]}
    assert latency_of(data, both) == pytest.approx(2 * (0.6 * 0.1 + 0.4 * 0.05))
    report = evaluate_placement(parse_instance(data), both)
    assert report.saving_s == pytest.approx(2.0 - 2 * (0.6 * 0.1 + 0.4 * 0.05))
    assert report.capacity_used == {"s0": 2.0, "s1": 1.0} and report.respects_capacities


def test_weights_are_not_normalised_and_layers_add_up() -> None:
    data = tiny()
    data["users"][0]["weight"] = 1.0
    one = latency_of(data, {"s0": [[0, "a"]]})
    data["users"][0]["weight"] = 4.0
    assert latency_of(data, {"s0": [[0, "a"]]}) == pytest.approx(4 * one)
    two_layers = tiny()
    two_layers["layers"] = [two_layers["layers"][0], copy.deepcopy(two_layers["layers"][0])]
    placement = {"s0": [[0, "a"], [1, "b"]]}
    # layer 0: {a,b} -> 1.0 (b falls back), {a} -> 0.1; layer 1: {a,b} -> 1.0, {a} -> 1.0
    expected = 2 * ((0.6 * 1.0 + 0.4 * 0.1) + (0.6 * 1.0 + 0.4 * 1.0))
    assert latency_of(two_layers, placement) == pytest.approx(expected)
    ci = compile_instance(parse_instance(two_layers))
    assert nothing_cached_latency(ci) == pytest.approx(2 * 2 * 1.0)


def test_duplicate_sets_are_merged_and_bad_placements_refused() -> None:
    data = tiny()
    data["layers"][0]["activations"]["u"] = [
        {"experts": ["a", "b"], "prob": 0.3},
        {"experts": ["b", "a"], "prob": 0.3},
        {"experts": ["a"], "prob": 0.4},
    ]
    assert latency_of(data, {"s1": [[0, "a"]]}) == pytest.approx(2 * (0.6 + 0.4 * 0.05))
    instance = parse_instance(data)
    for bad, match in [
        ({"zz": []}, "unknown server 'zz'"),
        ({"s0": [[3, "a"]]}, "no layer 3"),
        ({"s0": [[0, "c"]]}, "has no expert 'c'"),
        ({"s0": [["a", 0]]}, "is not"),
    ]:
        with pytest.raises(PlacementError, match=match):
            evaluate_placement(instance, bad)


# ---- exact optimum ----------------------------------------------------------------------------


def brute_force(ci: CompiledInstance) -> float:
    """The lowest expected latency over every placement that respects the capacities."""
    cells = ci.n_servers * ci.n_items
    best = math.inf
    for bits in itertools.product([False, True], repeat=cells):
        x = np.array(bits, dtype=bool).reshape(ci.n_servers, ci.n_items)
        if ci.respects_capacities(x):
            best = min(best, expected_latency(ci, x))
    return best


@pytest.mark.parametrize("top_k", [1, 2])
def test_milp_equals_brute_force(top_k: int) -> None:
    rng = np.random.default_rng(100 + top_k)
    for _ in range(10):
        instance = random_instance(rng, top_k, servers=(2, 2), layers=(1, 2), experts=(2, 3))
        ci = compile_instance(instance)
        if ci.n_servers * ci.n_items > 12:
            continue
        result = solve(ci, "exact")
        assert result.algorithm == "exact"
        assert result.expected_latency_s == pytest.approx(brute_force(ci), rel=1e-9, abs=1e-12)


def test_exact_with_a_time_limit_still_returns_a_feasible_placement() -> None:
    instance = random_instance(np.random.default_rng(5), 2)
    result = solve(instance, "exact", time_limit_s=10.0)
    ci = compile_instance(instance)
    assert ci.respects_capacities(ci.from_placement(result.placement))
    assert result.algorithm in ("exact", "exact-time-limited")


# ---- 100 random small instances: capacities, guarantees, ratios ---------------------------------


@pytest.fixture(scope="module")
def random_runs() -> list[dict[str, Any]]:
    """Per instance: K, the optimal saving and every algorithm's saving; capacities checked."""
    rng = np.random.default_rng(2026)
    runs = []
    for i in range(100):
        top_k = 1 if i % 2 == 0 else 2
        ci = compile_instance(random_instance(rng, top_k))
        x, name = solve_placement(ci, "exact")
        assert name == "exact"
        run: dict[str, Any] = {"k": top_k, "opt": saving(ci, x), "ci": ci}
        for algorithm in ALGORITHMS:
            if algorithm == "exact" or (algorithm == "greedy" and top_k != 1):
                continue
            y, _ = solve_placement(ci, algorithm, seed=i)
            assert ci.respects_capacities(y), (i, algorithm)
            run[algorithm] = saving(ci, y)
        runs.append(run)
    return runs


def ratio(run: dict[str, Any], algorithm: str) -> float:
    return run[algorithm] / run["opt"] if run["opt"] > 0 else 1.0


def test_no_algorithm_beats_the_optimum(random_runs: list[dict[str, Any]]) -> None:
    for run in random_runs:
        for algorithm in ("greedy", "sgd", "sgd_maxconv", "popular", "random", "independent"):
            if algorithm in run:
                assert run[algorithm] <= run["opt"] * (1 + 1e-9) + 1e-12


def test_k1_greedy_reaches_1_minus_1_over_e_on_every_instance(
    random_runs: list[dict[str, Any]],
) -> None:
    k1 = [run for run in random_runs if run["k"] == 1]
    assert len(k1) == 50
    worst = min(ratio(run, "greedy") for run in k1)
    assert worst >= ONE_MINUS_1_E, worst


def test_k1_successive_decomposition_keeps_its_proven_half(
    random_runs: list[dict[str, Any]],
) -> None:
    for run in random_runs:
        if run["k"] == 1:
            # sizes are multiples of 0.5, so the per-server knapsacks are exact: F >= F*/2
            assert ratio(run, "sgd") >= 0.5
            assert ratio(run, "sgd_maxconv") >= (1 - 0.01) / (2 - 0.01)


def test_sgd_median_ratio_to_the_optimum(random_runs: list[dict[str, Any]]) -> None:
    for k in (1, 2):
        for algorithm in ("sgd", "sgd_maxconv"):
            ratios = [ratio(run, algorithm) for run in random_runs if run["k"] == k]
            assert statistics.median(ratios) >= 0.97, (k, algorithm)


def test_single_server_greedy_is_sviridenko() -> None:
    rng = np.random.default_rng(7)
    for _ in range(15):
        ci = compile_instance(random_instance(rng, 1, servers=(1, 1), experts=(3, 6)))
        result = greedy_k1(ci)
        assert result.depth == 2 and "one knapsack" in result.guarantee
        x, _ = solve_placement(ci, "exact")
        opt = saving(ci, x)
        assert saving(ci, result.placement) >= ONE_MINUS_1_E * opt - 1e-12


# ---- the knapsack over curves ---------------------------------------------------------------


def random_curves(rng: np.random.Generator, n: int, capacity: int) -> list[Curve]:
    curves = []
    for _ in range(n):
        k = int(rng.integers(1, 6))
        units = np.concatenate([[0], rng.integers(1, capacity // 2 + 2, k)])
        value = np.concatenate([[0.0], rng.exponential(1.0, k)])
        curves.append(pareto(units, value, np.arange(k + 1), capacity))
    return curves


def test_dense_dp_is_exact_and_maxconv_within_epsilon() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        capacity = int(rng.integers(3, 25))
        curves = random_curves(rng, int(rng.integers(1, 5)), capacity)
        best = max(
            sum(c.value[i] for c, i in zip(curves, idx, strict=True))
            for idx in itertools.product(*[range(len(c.units)) for c in curves])
            if sum(c.units[i] for c, i in zip(curves, idx, strict=True)) <= capacity
        )
        value, picks = solve_dense(curves, capacity)
        assert value == pytest.approx(best)
        assert sum(c.units[p] for c, p in zip(curves, picks, strict=True)) <= capacity
        for eps in (0.0, 0.05, 0.3):
            v, p = solve_maxconv(curves, capacity, eps)
            assert sum(c.units[i] for c, i in zip(curves, p, strict=True)) <= capacity
            assert v == pytest.approx(sum(c.value[i] for c, i in zip(curves, p, strict=True)))
            assert v >= (1 - eps) * best - 1e-12
            if eps == 0.0:
                assert v == pytest.approx(best)


def test_capacity_units() -> None:
    ci = compile_instance(parse_instance(tiny()))
    assert default_step(ci) == pytest.approx(1.0)
    sizes, caps = to_units(ci, 0.3)
    assert sizes.tolist() == [4, 4] and caps.tolist() == [6, 3]  # sizes up, capacities down


# ---- the fast building blocks against plain reference versions ---------------------------------

ChainInput = decomposition._ChainInput
Steps = list[list[tuple[list[int], float]]]  # per component: (items added, value after)


def reference_chains(x: ChainInput, n_comp: int, cap_units: int) -> Steps:
    """The chain builder as it was before it became incremental: every step recomputes every
    gain over all sets. Kept verbatim (only the input is already laid out (K, S))."""
    lat, imp, loc_all = x.lat.copy(), x.imp.copy(), x.local.copy()
    mov = loc_all >= 0
    loc = np.maximum(loc_all, 0)
    w, set_comp = x.weight.copy(), x.set_comp.copy()
    units, item_comp = x.units, x.item_comp
    base = lat.max(axis=0)
    eff = lat.copy()
    rows = np.arange(lat.shape[0])[:, None]
    chosen = np.zeros(len(units), dtype=bool)
    resolved = np.zeros(n_comp)
    room = np.full(n_comp, cap_units, dtype=np.int64)
    active = np.ones(n_comp, dtype=bool)
    steps: Steps = [[] for _ in range(n_comp)]

    def segment_best(values: np.ndarray, comp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best = np.full(n_comp, -np.inf)
        where = np.full(n_comp, -1, dtype=np.intp)
        if not len(values):
            return best, where
        starts = np.searchsorted(comp, np.arange(n_comp))
        ends = np.searchsorted(comp, np.arange(n_comp), side="right")
        present = ends > starts
        best[present] = np.maximum.reduceat(values, starts[present])
        hit = np.flatnonzero((values == best[comp]) & (values > -np.inf))
        if len(hit):
            comps, first = np.unique(comp[hit], return_index=True)
            where[comps] = hit[first]
        return best, where

    while active.any():
        top = eff.max(axis=0)
        first = rows == eff.argmax(axis=0)
        other = np.where(first, np.where(first, -np.inf, eff).max(axis=0), top)
        cand = mov & ~chosen[loc]
        contrib = np.where(cand, w * (top - np.maximum(other, imp)), 0.0)
        single = np.bincount(loc[cand], weights=contrib[cand], minlength=len(units))
        full = w * (top - np.where(cand, imp, eff).max(axis=0))
        group_gain = np.where(cand, single[loc], 0.0).sum(axis=0) + full - contrib.sum(axis=0)
        group_units = np.where(cand, units[loc], 0).sum(axis=0)
        ok_s = ~chosen & (units <= room[item_comp]) & (single > 0) & active[item_comp]
        r_s = np.where(ok_s, single / np.maximum(units, 1e-300), -np.inf)
        r_s = np.where(ok_s & (units == 0), np.inf, r_s)
        ok_g = (cand.sum(axis=0) >= 2) & (group_units <= room[set_comp]) & (group_gain > 0)
        r_g = np.where(ok_g, group_gain / np.maximum(group_units, 1e-300), -np.inf)
        r_g = np.where(ok_g & (group_units == 0), np.inf, r_g)
        best_s, at_s = segment_best(r_s, item_comp)
        best_g, at_g = segment_best(r_g, set_comp)
        use_g = active & (best_g > best_s)
        use_s = active & ~use_g & (best_s > -np.inf)
        active &= use_g | use_s
        if not active.any():
            break
        picks: dict[int, list[int]] = {}
        for c in np.flatnonzero(use_s):
            picks[int(c)] = [int(at_s[c])]
        for c in np.flatnonzero(use_g):
            s = at_g[c]
            picks[int(c)] = sorted(set(loc[:, s][cand[:, s]].tolist()))
        for c, items in picks.items():
            chosen[items] = True
            room[c] -= int(units[items].sum())
        hit = mov & chosen[loc]
        eff = np.where(hit, imp, eff)
        top = eff.max(axis=0)
        done = ~(mov & ~hit).any(axis=0)
        if done.sum() * 4 > len(w):
            resolved += np.bincount(
                set_comp[done], weights=w[done] * (base[done] - top[done]), minlength=n_comp
            )
            keep = ~done
            lat, imp, eff, mov, loc = (a[:, keep] for a in (lat, imp, eff, mov, loc))
            w, base, top, set_comp = w[keep], base[keep], top[keep], set_comp[keep]
        value = resolved + np.bincount(set_comp, weights=w * (base - top), minlength=n_comp)
        for c, items in picks.items():
            steps[c].append((items, float(value[c])))
    return steps


def random_chain_input(rng: np.random.Generator, width: int) -> tuple[ChainInput, int, int]:
    """Components of 2-12 items with sets of up to ``width`` members; few distinct weights,
    latencies and sizes (zero sizes too), so that exact ties are common."""
    n_comp = int(rng.integers(1, 6))
    item_comp, set_comp, local, lat, imp, weight, units = [], [], [], [], [], [], []
    start = 0
    for c in range(n_comp):
        k = int(rng.integers(2, 13))
        item_comp += [c] * k
        units += rng.choice([0, 1, 1, 2, 3], size=k).tolist()
        for _ in range(int(rng.integers(1, 30))):
            size = int(rng.integers(1, width + 1))
            members = rng.choice(k, size=min(size, k), replace=False) + start
            col_local = np.full(width, -1)
            col_lat = np.full(width, -np.inf)
            col_imp = np.full(width, -np.inf)
            for j, n in enumerate(members):
                col_lat[j] = rng.choice([0.1, 0.2, 0.3])
                movable = j == 0 or rng.random() < 0.8
                col_local[j] = n if movable else -1
                col_imp[j] = rng.choice([0.01, 0.05]) if movable else col_lat[j]
            local.append(col_local)
            lat.append(col_lat)
            imp.append(col_imp)
            weight.append(float(rng.choice([0.25, 0.5, 1.0])))
            set_comp.append(c)
        start += k
    x = ChainInput(
        item_comp=np.array(item_comp),
        units=np.array(units, dtype=np.int64),
        set_comp=np.array(set_comp),
        weight=np.array(weight),
        local=np.array(local).T.copy(),
        lat=np.array(lat).T.copy(),
        imp=np.array(imp).T.copy(),
    )
    return x, n_comp, int(rng.integers(0, 20))


def assert_same_chains(got: Steps, want: Steps) -> int:
    assert [[items for items, _ in c] for c in got] == [[items for items, _ in c] for c in want]
    for g, w in zip(got, want, strict=True):
        assert [v for _, v in g] == pytest.approx([v for _, v in w], rel=1e-12, abs=1e-15)
    return sum(len(c) for c in want)


def test_incremental_chains_match_the_reference_on_random_inputs() -> None:
    rng = np.random.default_rng(5)
    steps = 0
    for i in range(300):
        x, n_comp, cap = random_chain_input(rng, width=2 + i % 3)
        got = decomposition._chains(x, n_comp, cap)
        steps += assert_same_chains(got, reference_chains(x, n_comp, cap))
    assert steps > 1000


def test_incremental_chains_match_the_reference_in_the_solver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[ChainInput, int, int, Steps]] = []
    chains = decomposition._chains

    def spy(x: ChainInput, n_comp: int, cap: int) -> Steps:
        steps = chains(x, n_comp, cap)
        seen.append((x, n_comp, cap, steps))
        return steps

    monkeypatch.setattr(decomposition, "_chains", spy)
    rng = np.random.default_rng(9)
    for i in range(30):
        ranges = {"layers": (1, 3), "experts": (6, 14), "users": (1, 3)}
        ci = compile_instance(random_instance(rng, 2 + i % 2, **ranges))
        successive_decomposition(ci, exact_limit=0, refine=False)
    shape = preset("deepseek-moe-16b", moe_layers=3, top_k=2)
    generated = generate_instance(
        shape, n_servers=3, n_users=2, tokens_per_user=300, capacity_gb=0.3, seed=2
    )
    successive_decomposition(compile_instance(generated), capacity_step=0.001)
    assert len(seen) >= 60
    steps = sum(assert_same_chains(s, reference_chains(x, n, c)) for x, n, c, s in seen)
    assert steps > 500


def test_fill_gains_stay_equal_to_a_full_recount() -> None:
    def recount(sets: Any, n_items: int) -> np.ndarray:  # the former per-step recomputation
        eff, imp, mov = sets.lat.T, sets.imp.T, sets.movable.T
        cols = np.arange(eff.shape[1])[None, :]
        top = eff.max(axis=1)
        j1 = np.argmax(eff, axis=1)
        second = np.where(cols == j1[:, None], -np.inf, eff).max(axis=1)
        other = np.where(cols == j1[:, None], second[:, None], top[:, None])
        w = sets.weight[:, None]
        contrib = np.where(mov, w * (top[:, None] - np.maximum(other, imp)), 0.0)
        return np.bincount(sets.members.T[mov], weights=contrib[mov], minlength=n_items)

    rng = np.random.default_rng(4)
    for i in range(30):
        ci = compile_instance(random_instance(rng, 1 + i % 3, experts=(3, 10)))
        served = np.full((len(ci.user_ids), ci.n_items), 0.0) + ci.fallback[:, None]
        no_units = np.zeros(ci.n_items, dtype=np.int64)
        gains = decomposition._ItemGains(
            decomposition._server_sets(ci, served, 0, no_units, 0), ci.n_items
        )
        for n in rng.permutation(ci.n_items)[: ci.n_items // 2]:
            assert np.array_equal(gains.single(), recount(gains.sets, ci.n_items))
            gains.choose(int(n))
        assert np.array_equal(gains.single(), recount(gains.sets, ci.n_items))


def test_convolution_frontier_matches_sorting_every_pair() -> None:
    rng = np.random.default_rng(6)
    for _ in range(300):
        n = int(rng.integers(1, 200))
        units = rng.integers(0, int(rng.integers(1, 40)), n)
        value = np.round(rng.random(n), int(rng.integers(0, 3)))  # many equal values
        order = np.lexsort((-value, units))
        best_before = np.concatenate([[-np.inf], np.maximum.accumulate(value[order])[:-1]])
        want = order[value[order] > best_before]  # the former frontier: sort, keep improvements
        assert np.array_equal(_frontier(units, value), want)


# ---- nothing fits -------------------------------------------------------------------------------


def test_nothing_fits_is_valid_and_everything_falls_back(tmp_path: Path) -> None:
    data = tiny(servers=[{"id": "s0", "capacity": 0.5}, {"id": "s1", "capacity": 0.0}])
    instance = parse_instance(data)
    for algorithm in ALGORITHMS:
        if algorithm == "greedy":
            continue
        result = solve(instance, algorithm)
        assert result.placement == {"s0": [], "s1": []}, algorithm
        assert result.expected_latency_s == pytest.approx(2.0)
        assert result.saving_s == 0.0
    k1 = copy.deepcopy(data)
    k1["top_k"] = 1
    k1["layers"][0]["activations"]["u"] = [{"experts": ["a"], "prob": 1.0}]
    assert solve(parse_instance(k1), "greedy").placement == {"s0": [], "s1": []}
    path = tmp_path / "nothing.json"
    path.write_text(json.dumps(data))
    run = moe2("cache-plan", "--instance", str(path), "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["algorithm"] == "sgd_maxconv" and result["placement"] == {"s0": [], "s1": []}


# ---- algorithms that do not apply ----------------------------------------------------------


def test_greedy_refuses_k2_and_unknown_algorithms_are_refused() -> None:
    instance = parse_instance(tiny())
    with pytest.raises(CachingAlgorithmError, match="greedy needs top_k = 1"):
        solve(instance, "greedy")
    with pytest.raises(CachingAlgorithmError, match="unknown algorithm 'magic'"):
        solve(instance, "magic")


# ---- bad input: CachingInstanceError and the command line ---------------------------------------


def _bad_cases() -> list[tuple[str, dict[str, Any] | str, str]]:
    def edit(path: list[Any], value: Any) -> dict[str, Any]:
        data = tiny()
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return data

    act = ["layers", 0, "activations", "u"]
    return [
        ("negative capacity", edit(["servers", 0, "capacity"], -1.0), "servers.0.capacity"),
        ("negative size", edit(["layers", 0, "experts", 1, "size"], -2.0), "experts.1.size"),
        ("negative weight", edit(["users", 0, "weight"], -1.0), "users.0.weight"),
        ("negative latency", edit(["users", 0, "latency_s", "s0"], -0.1), "latency_s.s0"),
        ("nan size", edit(["layers", 0, "experts", 0, "size"], float("nan")), "finite number"),
        ("fallback too fast", edit(["users", 0, "fallback_latency_s"], 0.07), "slowest"),
        ("missing latency", edit(["users", 0, "latency_s"], {"s0": 0.1}), "no latency_s for"),
        (
            "unknown server",
            edit(["users", 0, "latency_s"], {"s0": 0.1, "s1": 0.1, "s9": 0.1}),
            "unknown server(s) 's9'",
        ),
        (
            "probabilities off",
            edit(act, [{"experts": ["a", "b"], "prob": 0.5}, {"experts": ["a"], "prob": 0.4}]),
            "sum to 0.9",
        ),
        (
            "negative probability",
            edit(act, [{"experts": ["a", "b"], "prob": 1.5}, {"experts": ["a"], "prob": -0.5}]),
            "greater than or equal to 0",
        ),
        ("set too large", tiny(top_k=1), "more than top_k = 1"),
        ("empty set", edit(act, [{"experts": [], "prob": 1.0}]), "empty activated set"),
        ("duplicate in set", edit(act, [{"experts": ["a", "a"], "prob": 1.0}]), "appears twice"),
        ("unknown expert", edit(act, [{"experts": ["a", "zz"], "prob": 1.0}]), "'zz'"),
        (
            "unknown user",
            edit(["layers", 0, "activations", "ghost"], [{"experts": ["a"], "prob": 1.0}]),
            "unknown user 'ghost'",
        ),
        ("no activations", edit(["layers", 0, "activations"], {}), "no activations for user"),
        (
            "duplicate server",
            edit(["servers", 1, "id"], "s0"),
            "duplicate server id 's0'",
        ),
        (
            "duplicate expert",
            edit(["layers", 0, "experts", 1, "id"], "a"),
            "duplicate expert id 'a'",
        ),
        ("unknown field", edit(["colour"], "red"), "colour: Extra inputs are not permitted"),
        ("top_k zero", edit(["top_k"], 0), "top_k"),
        ("not json", "{bad json", "not valid JSON"),
    ]


BAD = _bad_cases()


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """Every bad case through ``moe2 cache-plan`` (in parallel: each start costs ~1 s)."""
    root = tmp_path_factory.mktemp("bad")
    procs = {}
    for name, data, _ in BAD:
        path = root / f"{name.replace(' ', '_')}.json"
        text = data if isinstance(data, str) else json.dumps(data, allow_nan=True)
        path.write_text(text)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "moe2", "cache-plan", "--instance", str(path), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    extra = {
        "missing file": ["--instance", str(root / "nope.json")],
        "unknown algorithm": ["--instance", str(root / "top_k_zero.json"), "--algorithm", "x"],
        "no instance": [],
    }
    good = root / "good.json"
    good.write_text(json.dumps(tiny()))
    extra["greedy on k2"] = ["--instance", str(good), "--algorithm", "greedy"]
    extra["unknown algorithm"] = ["--instance", str(good), "--algorithm", "magic"]
    for name, args in extra.items():
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "moe2", "cache-plan", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[name] = (proc.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize(("name", "data", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_instances_are_refused(
    name: str,
    data: dict[str, Any] | str,
    message: str,
    cli_runs: dict[str, tuple[int, str, str]],
) -> None:
    with pytest.raises(CachingInstanceError, match="invalid caching instance|not valid JSON") as e:
        if isinstance(data, str):
            raise CachingInstanceError(f"not valid JSON: {data}")
        parse_instance(data)
    if not isinstance(data, str):
        assert message in str(e.value)
    code, stdout, stderr = cli_runs[name]
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("error:") and message in " ".join(stderr.split())
    assert "Traceback" not in stderr and not stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing file", "does not exist"),
        ("unknown algorithm", "unknown algorithm 'magic'"),
        ("greedy on k2", "greedy needs top_k = 1"),
        ("no instance", "give --instance FILE"),
    ],
)
def test_cli_usage_errors(
    name: str, message: str, cli_runs: dict[str, tuple[int, str, str]]
) -> None:
    code, stdout, stderr = cli_runs[name]
    assert code == 2 and message in " ".join(stderr.split()) and "Traceback" not in stderr


def test_load_instance_errors(tmp_path: Path) -> None:
    with pytest.raises(CachingInstanceError, match="does not exist"):
        load_instance(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(CachingInstanceError, match="not valid JSON"):
        load_instance(bad)
    with pytest.raises(CachingInstanceError, match="is a directory"):
        load_instance(tmp_path)


def test_cli_json_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = random_instance_data(rng, 1)
    path = tmp_path / "k1.json"
    path.write_text(json.dumps(data))
    run = moe2("cache-plan", "--instance", str(path), "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result) == {
        "placement",
        "expected_latency_s",
        "saving_s",
        "capacity_used",
        "algorithm",
        "runtime_s",
    }
    assert result["algorithm"] == "greedy"
    report = evaluate_placement(parse_instance(data), result["placement"])
    assert report.respects_capacities
    assert report.expected_latency_s == pytest.approx(result["expected_latency_s"])


# ---- traces -----------------------------------------------------------------------------------


def test_trace_round_trip(tmp_path: Path) -> None:
    counts = TraceCounts()
    counts.add("u0", 0, ["e1", "e0"], 3)
    counts.add("u0", 0, ["e0", "e2"], 1)
    counts.add("u0", 1, ["e2"], 2)
    counts.add("u1", 0, ["e0", "e1"], 5)
    counts.add("u1", 1, ["e1", "e2"], 5)
    path = tmp_path / "trace.jsonl"
    write_trace(path, counts.records())
    again = read_trace(path)
    assert again.counts == counts.counts
    probs = activation_probabilities(again, [["e0", "e1", "e2"]] * 2)
    assert probs[0]["u0"] == [
        {"experts": ["e0", "e1"], "prob": 0.75},
        {"experts": ["e0", "e2"], "prob": 0.25},
    ]
    assert probs[1]["u1"] == [{"experts": ["e1", "e2"], "prob": 1.0}]
    # probabilities -> counts -> probabilities
    again_counts = TraceCounts()
    for layer, per_user in enumerate(probs):
        for user, rows in per_user.items():
            for row in rows:
                again_counts.add(user, layer, row["experts"], round(row["prob"] * 400))
    assert activation_probabilities(again_counts, [["e0", "e1", "e2"]] * 2) == probs


def test_request_traces_aggregate_like_counts(tmp_path: Path) -> None:
    shape = preset("mixtral-8x7b", moe_layers=3)
    requests = generate_requests(shape, n_users=2, tokens_per_user=50, seed=4)
    path = tmp_path / "requests.jsonl"
    write_trace(path, requests)
    assert path.read_text().count("\n") == 100
    assert read_trace(path).counts == generate_counts(shape, 2, 50, seed=4).counts


def test_trace_errors_name_the_line() -> None:
    with pytest.raises(TraceError, match="line 2: not valid JSON"):
        parse_trace_lines(['{"user": "u", "layer": 0, "experts": ["a"], "count": 1}', "{x"])
    with pytest.raises(TraceError, match="line 1: .*count"):
        parse_trace_lines(['{"user": "u", "layer": 0, "experts": ["a"], "count": 0}'])
    with pytest.raises(TraceError, match="line 1: appears twice|line 1: an expert appears"):
        parse_trace_lines(['{"user": "u", "layers": [["a", "a"]]}'])
    with pytest.raises(TraceError, match="line 3: .*extra|line 3: .*Extra"):
        parse_trace_lines(["", "", '{"user": "u", "layers": [["a"]], "when": 1}'])


# ---- the generator ------------------------------------------------------------------------------


def test_presets_are_the_models_shapes() -> None:
    shapes = {n: (p.moe_layers, p.experts, p.top_k) for n, p in PRESETS.items()}
    assert shapes == {
        "mixtral-8x7b": (32, 8, 2),
        "deepseek-moe-16b": (27, 64, 6),
        "qwen1.5-moe-a2.7b": (24, 60, 4),
    }
    assert PRESETS["mixtral-8x7b"].expert_size_gb() == pytest.approx(0.352, abs=1e-3)
    assert PRESETS["deepseek-moe-16b"].expert_size_gb() == pytest.approx(0.0173, abs=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_generator_presets_make_valid_instances(name: str) -> None:
    shape = preset(name, moe_layers=2)
    instance = generate_instance(
        shape, n_servers=3, n_users=2, tokens_per_user=300, capacity_gb=1.0, seed=1
    )
    assert instance.top_k == shape.top_k and len(instance.layers) == 2
    assert all(len(layer.experts) == shape.experts for layer in instance.layers)
    for layer in instance.layers:
        for sets in layer.activations.values():
            assert math.isclose(sum(a.prob for a in sets), 1.0)
            assert all(len(a.experts) == shape.top_k for a in sets)
    again = generate_instance(
        shape, n_servers=3, n_users=2, tokens_per_user=300, capacity_gb=1.0, seed=1
    )
    assert again == instance  # seeded
    result = solve(instance, "sgd_maxconv")
    assert result.saving_s > 0


def _pair_information(shape_name: str, **overrides: Any) -> tuple[list[int], float]:
    """Expert frequencies (descending) and the mean pointwise mutual information of pairs."""
    shape = preset(shape_name, moe_layers=1, top_k=2, **overrides)
    acts = generate_counts(shape, 1, 4000, seed=0).counts[("u0", 0)]
    singles: dict[str, int] = {}
    for key, c in acts.items():
        for e in key:
            singles[e] = singles.get(e, 0) + c
    total = sum(acts.values())
    info = sum(
        c * math.log((c / total) / ((singles[a] / total) * (singles[b] / total)))
        for (a, b), c in acts.items()
    )
    return sorted(singles.values(), reverse=True), info / total


def test_generated_popularity_is_skewed_and_coactivated() -> None:
    freq, info = _pair_information("deepseek-moe-16b")
    assert freq[0] > 5 * freq[len(freq) // 2]  # Zipf: the head dominates the median
    _, info_without_topics = _pair_information("deepseek-moe-16b", topic_strength=0.0)
    assert info > info_without_topics + 0.1  # topics make experts co-activate
