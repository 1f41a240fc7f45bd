"""SlimCaching: every algorithm against the exact optimum, sgd against sgd_maxconv, a plot.

    .venv/bin/python benchmarks/caching.py [--seed 0] [--instances 100] [--no-plot]

(1) ``--instances`` seeded random small instances (``controller/caching/random_instance.py``:
    2-3 servers, 1-3 users, 1-3 layers of 3-6 experts; K = 1 for even, K = 2 for odd indices)
    solved exactly by the MILP: every algorithm's placement is checked against the capacities,
    and the median and worst ratio of its saving to the optimal saving are printed, per K; for
    K = 1 the greedy's ratio is checked against 1 - 1/e on every instance. "sgd_plain" is the
    successive pass alone (no refinement). (1b) the effect of greedy chains instead of exhaustive
    per-component curves, with and without the refinement.
(2) A large instance from ``controller/caching/traces.py``: 32 layers x 64 experts, K = 2, the
    expert size of DeepSeek-MoE-16B (17.3 MB in fp16), 8 servers of 2, 2, 3, 3, 4, 4, 6, 6 GB
    (30 GB for 35.4 GB of experts), 4 users with 2000 generated tokens each. sgd (plain DP) and
    sgd_maxconv at three capacity steps: the default (exact here: one unit = one expert), 1 MB and
    0.5 MB; time (total, building the per-component curves, the knapsacks) and expected latency;
    then the baselines.
(3) docs/caching/latency_vs_capacity.png: expected latency against the capacity per server (all
    8 servers equal) on the same workload, for sgd_maxconv, sgd and the baselines.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.caching import ALGORITHMS, compile_instance  # noqa: E402
from controller.caching.compiled import CompiledInstance  # noqa: E402
from controller.caching.decomposition import successive_decomposition  # noqa: E402
from controller.caching.latency import (  # noqa: E402
    expected_latency,
    nothing_cached_latency,
    saving,
)
from controller.caching.random_instance import random_instance  # noqa: E402
from controller.caching.solver import solve_placement  # noqa: E402
from controller.caching.traces import generate_instance, preset  # noqa: E402

PLOT = ROOT / "docs" / "caching" / "latency_vs_capacity.png"
LARGE_CAPACITIES_GB = [2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0]
PLOT_CAPACITIES_GB = [0.25, 0.5, 1.0, 2.0, 3.0, 4.5, 6.0]
HEURISTICS = ("greedy", "sgd", "sgd_maxconv", "sgd_plain", "popular", "random", "independent")


def small(seed: int, n: int) -> None:
    print(f"== (1) {n} random small instances against the exact optimum (MILP, HiGHS)")
    rng = np.random.default_rng(seed)
    ratios: dict[tuple[str, int], list[float]] = {}
    times: dict[str, float] = dict.fromkeys(ALGORITHMS, 0.0)
    over_capacity = 0
    below_bound: list[int] = []
    for i in range(n):
        k = 1 if i % 2 == 0 else 2
        ci = compile_instance(random_instance(rng, k))
        t = time.perf_counter()
        x, name = solve_placement(ci, "exact")
        times["exact"] += time.perf_counter() - t
        if name != "exact":
            print(f"   instance {i}: the MILP did not prove optimality ({name})")
        opt = saving(ci, x)
        for algorithm in HEURISTICS:
            if algorithm == "greedy" and k != 1:
                continue
            t = time.perf_counter()
            if algorithm == "sgd_plain":  # the successive pass alone, without refinement
                y = successive_decomposition(ci, method="dp", refine=False).placement
            else:
                y, _ = solve_placement(ci, algorithm, seed=i)
            times[algorithm] = times.get(algorithm, 0.0) + time.perf_counter() - t
            if not ci.respects_capacities(y):
                over_capacity += 1
            r = saving(ci, y) / opt if opt > 0 else 1.0
            ratios.setdefault((algorithm, k), []).append(r)
            if algorithm == "greedy" and r < 1 - 1 / math.e:
                below_bound.append(i)
    print(f"   placements over a capacity: {over_capacity} (every algorithm, every instance)")
    print(
        f"   K = 1 greedy below (1 - 1/e) = {1 - 1 / math.e:.4f} of the optimum: "
        f"{len(below_bound)} instance(s) {below_bound or ''}"
    )
    print(f"   {'algorithm':<12} {'K':>2} {'n':>4} {'median':>8} {'worst':>8} {'time s':>8}")
    for algorithm in HEURISTICS:
        for k in (1, 2):
            r = ratios.get((algorithm, k))
            if not r:
                continue
            print(
                f"   {algorithm:<12} {k:>2} {len(r):>4} {statistics.median(r):>8.4f} "
                f"{min(r):>8.4f} {times[algorithm]:>8.2f}"
            )
    print(f"   exact (MILP) total time {times['exact']:.2f} s; ratio = saving / optimal saving")
    print("   sgd_plain: one successive pass (fastest server first), no refinement")


def chain_effect(seed: int, n: int = 60) -> None:
    print(f"\n== (1b) per-component curves: exhaustive subsets vs greedy chains ({n} instances)")
    print("   K = 2, 1-2 layers of 6-10 experts, 2-3 servers, 1-2 users; ratio to the optimum")
    rng = np.random.default_rng(seed + 1)
    ratios: dict[str, list[float]] = {}
    for _ in range(n):
        ci = compile_instance(random_instance(rng, 2, layers=(1, 2), experts=(6, 10), users=(1, 2)))
        x, _ = solve_placement(ci, "exact")
        opt = saving(ci, x)
        for label, limit, refine in (
            ("exhaustive, plain pass", 10, False),
            ("chains, plain pass", 0, False),
            ("exhaustive, refined", 10, True),
            ("chains, refined", 0, True),
        ):
            y = successive_decomposition(ci, exact_limit=limit, refine=refine).placement
            ratios.setdefault(label, []).append(saving(ci, y) / opt if opt > 0 else 1.0)
    for label, r in ratios.items():
        print(
            f"   {label:<24} median {statistics.median(r):.4f}  mean {statistics.mean(r):.4f}  "
            f"worst {min(r):.4f}"
        )


def large_instance(capacities: list[float], seed: int) -> CompiledInstance:
    shape = preset("deepseek-moe-16b", moe_layers=32, top_k=2)
    instance = generate_instance(
        shape,
        n_servers=len(capacities),
        n_users=4,
        tokens_per_user=2000,
        capacity_gb=capacities,
        seed=seed,
    )
    return compile_instance(instance)


def large(seed: int) -> None:
    print("\n== (2) large instance: 8 servers, 32 layers x 64 experts, K = 2")
    t = time.perf_counter()
    ci = large_instance(LARGE_CAPACITIES_GB, seed)
    print(
        f"   generated in {time.perf_counter() - t:.1f} s: {len(ci.set_weight)} activated sets "
        f"(user, layer, set), expert size {ci.size[0] * 1000:.2f} MB, capacities "
        f"{LARGE_CAPACITIES_GB} GB; nothing cached: {nothing_cached_latency(ci):.4f} s"
    )
    print(
        f"   {'step':<14} {'algorithm':<12} {'total s':>8} {'curves s':>9} {'knapsack s':>11} "
        f"{'latency s':>10}"
    )
    for label, step in (("default", None), ("1 MB", 0.001), ("0.5 MB", 0.0005)):
        rows: dict[str, tuple[float, Any, float]] = {}
        for method, name in (("dp", "sgd"), ("maxconv", "sgd_maxconv")):
            t = time.perf_counter()
            result = successive_decomposition(ci, method=method, capacity_step=step)
            total = time.perf_counter() - t
            latency = expected_latency(ci, result.placement)
            assert ci.respects_capacities(result.placement)
            rows[name] = (total, result.timing, latency)
            shown = f"{label} ({result.step * 1000:.3g} MB)"
            print(
                f"   {shown:<14} {name:<12} {total:>8.2f} {result.timing.curves_s:>9.2f} "
                f"{result.timing.knapsack_s:>11.3f} {latency:>10.5f}"
            )
        (t_dp, tm_dp, l_dp), (t_mc, tm_mc, l_mc) = rows["sgd"], rows["sgd_maxconv"]
        print(
            f"   {'':<14} maxconv vs DP: {t_dp / t_mc:.1f}x faster in total, "
            f"{tm_dp.knapsack_s / tm_mc.knapsack_s:.1f}x in the knapsacks; "
            f"latency {100 * (l_mc / l_dp - 1):+.3f} %"
        )
    for algorithm in ("popular", "random", "independent"):
        t = time.perf_counter()
        x, _ = solve_placement(ci, algorithm, seed=seed)
        total = time.perf_counter() - t
        assert ci.respects_capacities(x)
        print(
            f"   {'baseline':<14} {algorithm:<12} {total:>8.2f} {'':>9} {'':>11} "
            f"{expected_latency(ci, x):>10.5f}"
        )


def plot(seed: int) -> None:
    print(f"\n== (3) latency against capacity per server -> {PLOT.relative_to(ROOT)}")
    algorithms = ("sgd_maxconv", "sgd", "independent", "popular", "random")
    curves: dict[str, list[float]] = {a: [] for a in algorithms}
    nothing = 0.0
    for cap in PLOT_CAPACITIES_GB:
        ci = large_instance([cap] * 8, seed)
        nothing = nothing_cached_latency(ci)
        line = []
        for algorithm in algorithms:
            x, _ = solve_placement(ci, algorithm, seed=seed)
            assert ci.respects_capacities(x)
            curves[algorithm].append(expected_latency(ci, x))
            line.append(f"{algorithm} {curves[algorithm][-1]:.4f}")
        print(f"   {cap:>5} GB: " + ", ".join(line))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"sgd_maxconv": "o-", "sgd": "x--", "independent": "s-", "popular": "^-"}
    for algorithm in algorithms:
        ax.plot(PLOT_CAPACITIES_GB, curves[algorithm], styles.get(algorithm, "v-"), label=algorithm)
    ax.axhline(nothing, color="grey", linestyle=":", label="nothing cached")
    ax.set_xlabel("storage per server (GB), 8 servers")
    ax.set_ylabel("expected latency per token (s)")
    ax.set_title("32 layers x 64 experts (17.3 MB each), K = 2, 4 users")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPU(s), {platform.machine()}"
    )
    small(args.seed, args.instances)
    chain_effect(args.seed)
    large(args.seed)
    if not args.no_plot:
        plot(args.seed)
    print(f"\nwhole benchmark: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
