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
budgets, where far more sets are feasible and the bound, not the budgets, has to do the pruning.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=300, help="samples per instance in (a), (b)")
    parser.add_argument("--no-stress", action="store_true", help="skip (d), the loose budgets")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()},"
        f" seed {args.seed}, {args.samples} samples"
    )
    _, exhaustive_s = lattice_share(args.seed, args.samples)
    timing(args.seed, args.samples, exhaustive_s)
    baselines(args.seed)
    if not args.no_stress:
        stress(args.seed, args.samples)


if __name__ == "__main__":
    main()
