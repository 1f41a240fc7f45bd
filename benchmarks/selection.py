"""MoE² selection: how much of the lattice branch and bound visits, how fast it is, baselines.

    .venv/bin/python benchmarks/selection.py [--seed 0] [--samples 300]

Generates seeded random instances: experts with heterogeneous energy (0.5-10 J, log-uniform) and
delays in three categories that grow with energy, budgets that leave roughly a third to a half of
the experts individually usable and a few of them together, choice probabilities drawn from
Dirichlet distributions around an expert- and category-dependent skill (a skilled expert puts its
mass on the gold answer, an unskilled one on a random answer), and normal gate logits with an
expert-dependent mean, uninformative about skill, so adding an expert often raises the loss.

Prints (a) for N = 14 over 20 instances the median and largest share of the 2^14 subsets whose
loss moe2 evaluated (target <= 0.05), checking each result against exhaustive search; (b) the
median time of moe2 at N = 24 over 3 instances (target <= 2 s) beside the median exhaustive time
at N = 14 measured in this run, and their ratio; (c) loss and accuracy of every algorithm against
the optimum on a few instances with 200 samples; (d) beyond the targets, a stress case with loose
budgets, where far more sets are feasible and the bound, not the budgets, has to do the pruning;
(e) the scaling table: N = 16 ... 128 x tight, moderate and loose budgets (``scaling_instance``:
250 samples, 4 choices, 1-3 delay categories, delays leaving 40-60 % of the experts usable
alone, an energy budget of about 2, 6 or 12 times the median usable expert's energy): moe2
under a 2 s limit (time to the proven optimum, or the proven gap), subsets evaluated, and its
loss against greedy and against the solver before the anytime search (``legacy.py``, given
``--legacy-s`` seconds) in the same run; (f) which bounds pay, and what scoring small subtrees in
one batch (``search.LEAF_SETS``) saves, on a few of those instances.

    .venv/bin/python benchmarks/selection.py --only-scaling [--quick]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.selection import ALGORITHMS, SelectionInstance, parse_instance, solve  # noqa: E402
from controller.selection.legacy import legacy_moe2  # noqa: E402
from controller.selection.loss import Evaluator  # noqa: E402
from controller.selection.search import LEAF_SETS, AnytimeSearch  # noqa: E402

CATEGORIES = ("math", "science", "chat")


def random_instance(
    rng: np.random.Generator,
    n_experts: int,
    n_samples: int,
    *,
    top_k: int | None = None,
    loose: bool = False,
) -> SelectionInstance:
    """A seeded random instance shaped like a measured fleet (see the module docstring).

    ``loose``: a stress case beyond the realistic one: no delay budget binds and the energy budget
    is half the fleet's total, so every expert fits alone and many fit together.
    """
    energy = np.exp(rng.uniform(math.log(0.5), math.log(10.0), n_experts))
    # Bigger experts are slower; each category has its own prompt lengths; transmission on top.
    compute = 0.15 * energy * rng.lognormal(0.0, 0.3, n_experts)
    factor = rng.lognormal(0.0, 0.3, (n_experts, len(CATEGORIES)))
    delay = compute[:, None] * factor + rng.uniform(0.02, 0.3, (n_experts, 1))
    aggregation_s = 0.005

    # Skill: bigger experts know somewhat more; each is better at some categories than others.
    base = np.clip(0.35 + 0.04 * energy + rng.normal(0.0, 0.12, n_experts), 0.1, 0.95)
    skill = np.clip(base[:, None] + rng.normal(0.0, 0.12, (n_experts, len(CATEGORIES))), 0.05, 0.97)
    sharpness = rng.uniform(1.0, 6.0, n_experts)

    labels: list[int] = []
    probs: list[list[list[float]]] = []
    category = rng.integers(0, len(CATEGORIES), n_samples)
    for s in range(n_samples):
        n_choices = int(rng.integers(2, 6))
        label = int(rng.integers(0, n_choices))
        labels.append(label)
        rows = []
        for n in range(n_experts):
            alpha = np.full(n_choices, 0.4)
            knows = rng.random() < skill[n, category[s]]
            target = label if knows else int(rng.integers(0, n_choices))
            alpha[target] += sharpness[n]
            p = rng.dirichlet(alpha)
            p = np.maximum(p, 1e-9)
            rows.append((p / p.sum()).tolist())
        probs.append(rows)
    logits = rng.normal(rng.normal(0.0, 0.7, n_experts), 1.0, (n_samples, n_experts))

    # Budgets: delays admit a third to a half of the experts, energy a few of them together.
    usable = max(2, round(rng.uniform(1 / 3, 1 / 2) * n_experts))
    median = np.median(delay, axis=0)
    score = (delay / median).max(axis=1)
    threshold = np.sort(score)[usable - 1]
    delay_budget = threshold * median + aggregation_s
    passing = np.sort(energy[score <= threshold])
    together = int(rng.integers(2, 5))
    energy_budget = float(passing[:together].sum() * rng.uniform(1.0, 1.4))
    energy_budget = max(energy_budget, float(np.median(passing)))
    if loose:
        delay_budget = delay.max(axis=0) + aggregation_s + 1.0
        energy_budget = float(energy.sum() / 2)

    data: dict[str, Any] = {
        "experts": [
            {
                "id": f"expert-{n:02d}",
                "energy_j": float(energy[n]),
                "delay_s": {c: float(delay[n, i]) for i, c in enumerate(CATEGORIES)},
            }
            for n in range(n_experts)
        ],
        "budgets": {
            "energy_j": energy_budget,
            "delay_s": {c: float(delay_budget[i]) for i, c in enumerate(CATEGORIES)},
        },
        "aggregation_delay_s": aggregation_s,
        "top_k": top_k,
        "samples": {"labels": labels, "choice_probs": probs, "gate_logits": logits.tolist()},
    }
    return parse_instance(data)


def usable_share(instance: SelectionInstance) -> float:
    from controller.selection.loss import Evaluator

    ev = Evaluator(instance)
    return sum(ev.fits([n]) for n in range(ev.n_experts)) / ev.n_experts


def lattice_share(seed: int, n_samples: int) -> tuple[list[float], list[float]]:
    """(a): share of 2^14 evaluated by moe2 and by exhaustive; (b) exhaustive times at N = 14."""
    rng = np.random.default_rng(seed)
    shares: list[float] = []
    exhaustive_shares: list[float] = []
    exhaustive_s: list[float] = []
    usable: list[float] = []
    for _ in range(20):
        instance = random_instance(rng, 14, n_samples)
        usable.append(usable_share(instance))
        fast = solve(instance, "moe2")
        slow = solve(instance, "exhaustive")
        assert fast.selected == slow.selected, (fast, slow)
        assert fast.loss is not None and slow.loss is not None
        assert abs(fast.loss - slow.loss) <= 1e-9
        shares.append(fast.subsets_evaluated / 2**14)
        exhaustive_shares.append(slow.subsets_evaluated / 2**14)
        exhaustive_s.append(slow.runtime_s)
    print("(a) N = 14, 20 instances: share of the 2^14 subsets whose loss was evaluated")
    print(f"    usable experts (fit alone): median share {statistics.median(usable):.2f}")
    print(
        f"    moe2:       median {statistics.median(shares):.4f}  max {max(shares):.4f}"
        "  (target <= 0.05)"
    )
    print(
        f"    exhaustive: median {statistics.median(exhaustive_shares):.4f}"
        f"  max {max(exhaustive_shares):.4f}  (feasible sets; every result equal to moe2's)"
    )
    return shares, exhaustive_s


def timing(seed: int, n_samples: int, exhaustive_s: list[float]) -> None:
    rng = np.random.default_rng(seed + 1)
    times = []
    evaluated = []
    exhaustive_24: list[float] = []
    feasible_24: list[int] = []
    for _ in range(3):
        instance = random_instance(rng, 24, n_samples)
        started = time.perf_counter()
        result = solve(instance, "moe2")
        times.append(time.perf_counter() - started)
        evaluated.append(result.subsets_evaluated)
        check = solve(instance, "exhaustive")
        assert check.selected == result.selected
        exhaustive_24.append(check.runtime_s)
        feasible_24.append(check.subsets_evaluated)
    moe2_s = statistics.median(times)
    ref_s = statistics.median(exhaustive_s)
    print(f"(b) moe2 at N = 24, {n_samples} samples, 3 instances")
    print(
        f"    median {moe2_s:.3f} s (each: {', '.join(f'{t:.3f}' for t in times)};"
        f" subsets evaluated {', '.join(map(str, evaluated))})  (target <= 2 s)"
    )
    print(
        f"    exhaustive at N = 14 (median of the 20 above): {ref_s:.3f} s;"
        f" ratio moe2@24 / exhaustive@14 = {moe2_s / ref_s:.2f}"
    )
    print(
        f"    exhaustive on the same N = 24 instances: median"
        f" {statistics.median(exhaustive_24):.3f} s, feasible sets"
        f" {', '.join(map(str, feasible_24))} (same results as moe2)"
    )


def baselines(seed: int) -> None:
    rng = np.random.default_rng(seed + 2)
    print("(c) 200 samples: loss and accuracy of each algorithm; gap = loss - optimal loss")
    for i in range(3):
        instance = random_instance(rng, 12, 200)
        results = {a: solve(instance, a, seed=seed) for a in ALGORITHMS}
        best = results["exhaustive"].loss
        assert best is not None
        print(f"    instance {i} (N = 12)")
        print(
            f"      {'algorithm':<12} {'experts':>7} {'loss':>8} {'gap':>8} {'accuracy':>9}"
            f" {'energy J':>9} {'evaluated':>9}"
        )
        for name, r in results.items():
            assert r.loss is not None and r.accuracy is not None and r.energy_j is not None
            print(
                f"      {name:<12} {len(r.selected):>7} {r.loss:>8.4f} {r.loss - best:>8.4f}"
                f" {r.accuracy:>9.3f} {r.energy_j:>9.2f} {r.subsets_evaluated:>9}"
            )


def stress(seed: int, n_samples: int) -> None:
    rng = np.random.default_rng(seed + 3)
    shares, ratios, moe2_s, exhaustive_s = [], [], [], []
    for _ in range(10):
        instance = random_instance(rng, 14, n_samples, loose=True)
        fast = solve(instance, "moe2")
        slow = solve(instance, "exhaustive")
        assert fast.selected == slow.selected
        shares.append(fast.subsets_evaluated / 2**14)
        ratios.append(fast.subsets_evaluated / slow.subsets_evaluated)
        moe2_s.append(fast.runtime_s)
        exhaustive_s.append(slow.runtime_s)
    print("(d) stress, beyond the targets: loose budgets (all fit alone, energy = half the total)")
    print(
        f"    N = 14, 10 instances: moe2 evaluates median {statistics.median(shares):.4f}"
        f" (max {max(shares):.4f}) of 2^14, median {statistics.median(ratios):.2f} of the"
        f" feasible sets; median time moe2 {statistics.median(moe2_s):.3f} s,"
        f" exhaustive {statistics.median(exhaustive_s):.3f} s"
    )
    times, evaluated = [], []
    for _ in range(3):
        result = solve(random_instance(rng, 18, n_samples, loose=True), "moe2")
        times.append(result.runtime_s)
        evaluated.append(result.subsets_evaluated / 2**18)
    print(
        f"    N = 18, 3 instances: moe2 median {statistics.median(times):.2f} s,"
        f" evaluated median {statistics.median(evaluated):.4f} of 2^18"
    )


SET_SIZE = {"tight": 2.0, "moderate": 6.0, "loose": 12.0}
SCALING_N = (16, 24, 32, 48, 64, 96, 128)


def scaling_instance(
    rng: np.random.Generator, n_experts: int, budget: str, n_samples: int = 250
) -> SelectionInstance:
    """(e): 4 choices, 1-3 categories; the energy budget holds about SET_SIZE[budget] experts.

    Energies, delays, skills and logits as in ``random_instance`` (vectorised); delays leave
    40-60 % of the experts usable alone; the energy budget is SET_SIZE[budget] times the median
    energy of those, +-10 %.
    """
    n, n_choices = n_experts, 4
    categories = CATEGORIES[: int(rng.integers(1, 4))]
    n_cat = len(categories)
    energy = np.exp(rng.uniform(math.log(0.5), math.log(10.0), n))
    compute = 0.15 * energy * rng.lognormal(0.0, 0.3, n)
    delay = compute[:, None] * rng.lognormal(0.0, 0.3, (n, n_cat)) + rng.uniform(0.02, 0.3, (n, 1))
    aggregation_s = 0.005
    base = np.clip(0.35 + 0.04 * energy + rng.normal(0.0, 0.12, n), 0.1, 0.95)
    category = rng.integers(0, n_cat, n_samples)
    skill = np.clip(base[:, None] + rng.normal(0.0, 0.12, (n, n_cat)), 0.05, 0.97)
    sharpness = rng.uniform(1.0, 6.0, n)
    labels = rng.integers(0, n_choices, n_samples)
    knows = rng.random((n_samples, n)) < skill[:, category].T
    target = np.where(knows, labels[:, None], rng.integers(0, n_choices, (n_samples, n)))
    alpha = np.full((n_samples, n, n_choices), 0.4)
    np.put_along_axis(alpha, target[:, :, None], (0.4 + sharpness)[None, :, None], axis=2)
    draws = rng.gamma(alpha)
    probs = np.maximum(draws / draws.sum(axis=2, keepdims=True), 1e-9)
    probs = probs / probs.sum(axis=2, keepdims=True)
    logits = rng.normal(rng.normal(0.0, 0.7, n), 1.0, (n_samples, n))
    usable = max(2, round(rng.uniform(0.4, 0.6) * n))
    median = np.median(delay, axis=0)
    score = (delay / median).max(axis=1)
    threshold = np.sort(score)[usable - 1]
    delay_budget = threshold * median + aggregation_s
    passing = energy[score <= threshold]
    energy_budget = float(SET_SIZE[budget] * np.median(passing) * rng.uniform(0.9, 1.1))
    data: dict[str, Any] = {
        "experts": [
            {
                "id": f"expert-{i:03d}",
                "energy_j": float(energy[i]),
                "delay_s": {c: float(delay[i, j]) for j, c in enumerate(categories)},
            }
            for i in range(n)
        ],
        "budgets": {
            "energy_j": energy_budget,
            "delay_s": {c: float(delay_budget[j]) for j, c in enumerate(categories)},
        },
        "aggregation_delay_s": aggregation_s,
        "samples": {
            "labels": labels.tolist(),
            "choice_probs": probs.tolist(),
            "gate_logits": logits.tolist(),
        },
    }
    return parse_instance(data)


def scaling(seed: int, per_cell: int, limit_s: float, legacy_s: float) -> None:
    """(e): the scaling table, and the targets checked on it."""
    print(
        f"(e) scaling: {per_cell} instances per cell, moe2 limit {limit_s:g} s, legacy (the"
        f" solver before the anytime search) given {legacy_s:g} s"
    )
    print(
        f"    {'N':>4} {'budget':<9} {'optimal':>7} {'median s':>8} {'max s':>6}"
        f" {'max gap':>8} {'evaluated (median)':>18} {'vs greedy (min/max)':>20}"
        f" {'vs legacy':>10} {'legacy done':>11} {'legacy s':>8}"
    )
    verdicts: list[str] = []
    for n in SCALING_N:
        for budget in SET_SIZE:
            rng = np.random.default_rng([seed, n, list(SET_SIZE).index(budget)])
            times, gaps, evaluated, vs_greedy, vs_legacy, legacy_times = [], [], [], [], [], []
            optimal = 0
            for _ in range(per_cell):
                instance = scaling_instance(rng, n, budget)
                result = solve(instance, "moe2", time_limit_s=limit_s)
                greedy = solve(instance, "greedy")
                assert result.loss is not None and greedy.loss is not None
                assert result.gap is not None
                times.append(result.runtime_s)
                gaps.append(result.gap)
                evaluated.append(result.subsets_evaluated)
                optimal += result.optimal
                vs_greedy.append(result.loss - greedy.loss)
                old = legacy_moe2(instance, time.perf_counter() + legacy_s)
                if old is not None:
                    legacy_times.append(old.runtime_s)
                    vs_legacy.append(result.loss - old.loss)
                    if result.optimal:  # same optimum, same tie-breaking
                        assert old.selected == result.selected, (n, budget, old, result)
            legacy_col = f"{max(vs_legacy, key=abs):+.1e}" if vs_legacy else "-"
            legacy_t = f"{statistics.median(legacy_times):.2f}" if legacy_times else "-"
            print(
                f"    {n:>4} {budget:<9} {optimal:>3}/{per_cell:<3}"
                f" {statistics.median(times):>8.3f}"
                f" {max(times):>6.2f} {max(gaps):>8.4f} {statistics.median(evaluated):>18.0f}"
                f" {min(vs_greedy):>+10.4f}/{max(vs_greedy):>+8.4f} {legacy_col:>10}"
                f" {len(legacy_times):>5}/{per_cell:<5} {legacy_t:>8}"
            )
            if n <= 32:
                ok = optimal == per_cell and statistics.median(times) <= 1.0
                verdicts.append(
                    f"N = {n} {budget}: proven optimal {optimal}/{per_cell}, median"
                    f" {statistics.median(times):.3f} s: {'holds' if ok else 'MISSED'}"
                )
            if n == 64 and budget == "moderate":
                ok = all(g <= 0.01 for g in gaps) and all(t <= limit_s + 0.2 for t in times)
                ok = ok and max(vs_greedy) <= 1e-12
                verdicts.append(
                    f"N = 64 moderate: largest gap {max(gaps):.4f}, slowest {max(times):.2f} s,"
                    f" worst vs greedy {max(vs_greedy):+.4f}: {'holds' if ok else 'MISSED'}"
                )
    print("    targets: N <= 32 proven optimal, median <= 1 s; N = 64 moderate gap <= 1 % in 2 s")
    for line in verdicts:
        print(f"      {line}")


def bounds_ablation(seed: int) -> None:
    """(f): which bounds pay: total time and nodes expanded to the proven optimum."""
    cases = [(32, "moderate", i) for i in range(3)] + [(32, "loose", i) for i in range(2)]
    cases += [(40, "moderate", i) for i in range(2)]
    cases += [(48, "moderate", i) for i in range(4)] + [(64, "moderate", 1)]
    instances = []
    for n, budget, i in cases:
        rng = np.random.default_rng([seed, 1000 + n, list(SET_SIZE).index(budget), i])
        instances.append(Evaluator(scaling_instance(rng, n, budget)))
    configs: dict[str, dict[str, Any]] = {
        "prefix + modular, node by node": dict(leaf_sets=0),
        "prefix only": dict(modular_bound=False),
        "prefix + energy per sample": dict(energy_bound=True, modular_bound=False),
        "prefix + set-level modular (kept)": dict(),
        "prefix + tangent (2 rounds)": dict(modular_bound=False, tangent_bound=True),
        "prefix + modular + tangent": dict(tangent_bound=True),
    }
    print(
        f"(f) bounds: {len(cases)} instances (N = 32-64), time, nodes expanded and subtrees"
        f" scored in one batch (at most {LEAF_SETS} sets each) to the proven optimum"
    )
    for ev in instances:  # untimed: fills the cache of subset masks that every config uses
        AnytimeSearch(ev).run(None)
    for name, flags in configs.items():
        total_s, nodes, leaves = 0.0, 0, 0
        for ev in instances:
            started = time.perf_counter()
            search = AnytimeSearch(ev)
            search._started = True  # the incumbent only (as run() does first), then the flags
            search._incumbent(None)
            assert search.bnb is not None
            for key, value in flags.items():
                setattr(search.bnb, key, value)
            assert search.run(None)
            total_s += time.perf_counter() - started
            nodes += search.bnb.nodes_expanded
            leaves += search.bnb.leaves_enumerated
        print(f"    {name:<34} {total_s:>6.2f} s {nodes:>7} nodes {leaves:>7} batched subtrees")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=300, help="samples per instance in (a), (b)")
    parser.add_argument("--no-stress", action="store_true", help="skip (d), the loose budgets")
    parser.add_argument("--only-scaling", action="store_true", help="only (e) and (f)")
    parser.add_argument("--quick", action="store_true", help="(e) with 2 instances per cell")
    parser.add_argument("--limit-s", type=float, default=2.0, help="moe2's time limit in (e)")
    parser.add_argument("--legacy-s", type=float, default=3.0, help="the old solver's time in (e)")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()},"
        f" seed {args.seed}, {args.samples} samples"
    )
    if not args.only_scaling:
        _, exhaustive_s = lattice_share(args.seed, args.samples)
        timing(args.seed, args.samples, exhaustive_s)
        baselines(args.seed)
        if not args.no_stress:
            stress(args.seed, args.samples)
    scaling(args.seed, 2 if args.quick else 5, args.limit_s, args.legacy_s)
    bounds_ablation(args.seed)


if __name__ == "__main__":
    main()
