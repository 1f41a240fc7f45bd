"""Decide which experts each edge server caches (docs/design.md sections 4 and 6).

``solve(instance, algorithm)`` runs one of:

* ``exact``: the optimum by integer programming (SciPy's HiGHS MILP; small instances only). With a
  time limit that stops HiGHS before it proves optimality the algorithm is reported as
  ``exact-time-limited`` (the best placement found, not proven optimal).
* ``greedy``: K = 1 only: greedy with partial enumeration, (1 - 1/e) for one server
  (``greedy``).
* ``sgd``: successive greedy decomposition, each server's knapsack by the plain dynamic programme.
* ``sgd_maxconv``: the same with the (max,+) convolution knapsack (``decomposition``).
* ``popular``, ``random`` (seeded), ``independent``: baselines.

``plan(instance, algorithm=None)`` picks the default (``greedy`` when top_k = 1, else
``sgd_maxconv``), stops ``exact`` after ``EXACT_TIME_LIMIT_S``, and is what the command line
calls.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.caching.baselines import most_popular, random_placement
from controller.caching.compiled import BoolArray, CompiledInstance, compile_instance
from controller.caching.decomposition import independent, server_order, successive_decomposition
from controller.caching.exact import solve_exact
from controller.caching.greedy import greedy_k1
from controller.caching.instance import CachingInstance
from controller.caching.latency import expected_latency, saving

ALGORITHMS: tuple[str, ...] = (
    "exact",
    "greedy",
    "sgd",
    "sgd_maxconv",
    "popular",
    "random",
    "independent",
)


# ``plan`` (the command line) stops the MILP here; ``solve`` has no limit unless given one.
EXACT_TIME_LIMIT_S = 300.0


class CachingAlgorithmError(ValueError):
    """An unknown algorithm, or one that does not apply to the instance."""


class CachingResult(BaseModel):
    """The result object of docs/design.md section 6, plus the saving and the capacity used."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    placement: dict[str, list[tuple[int, str]]] = Field(
        description="server id -> [[layer index, expert id], ...] it caches"
    )
    expected_latency_s: float = Field(description="Exact expected latency of the placement (s)")
    saving_s: float = Field(description="Expected latency saved against caching nothing (s)")
    capacity_used: dict[str, float] = Field(description="server id -> sum of cached sizes")
    algorithm: str
    runtime_s: float


def default_algorithm(instance: CachingInstance) -> str:
    return "greedy" if instance.top_k == 1 else "sgd_maxconv"


def solve_placement(
    ci: CompiledInstance,
    algorithm: str,
    *,
    seed: int = 0,
    time_limit_s: float | None = None,
    capacity_step: float | None = None,
    epsilon: float | None = None,
) -> tuple[BoolArray, str]:
    """The placement matrix of an algorithm and the algorithm's reported name."""
    if algorithm not in ALGORITHMS:
        raise CachingAlgorithmError(
            f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}"
        )
    extra: dict[str, Any] = {} if epsilon is None else {"epsilon": epsilon}
    if algorithm == "exact":
        result = solve_exact(ci, time_limit_s=time_limit_s)
        return result.placement, "exact" if result.proven_optimal else "exact-time-limited"
    if algorithm == "greedy":
        if ci.top_k != 1:
            raise CachingAlgorithmError(
                f"greedy needs top_k = 1 (the saving is submodular only then); this instance has "
                f"top_k = {ci.top_k}: use sgd or sgd_maxconv"
            )
        return greedy_k1(ci, server_order=server_order(ci)).placement, algorithm
    if algorithm in ("sgd", "sgd_maxconv"):
        method = "dp" if algorithm == "sgd" else "maxconv"
        result = successive_decomposition(ci, method=method, capacity_step=capacity_step, **extra)
        return result.placement, algorithm
    if algorithm == "popular":
        return most_popular(ci), algorithm
    if algorithm == "random":
        return random_placement(ci, seed), algorithm
    return independent(ci, capacity_step=capacity_step, **extra), algorithm


def solve(
    instance: CachingInstance | CompiledInstance,
    algorithm: str,
    *,
    seed: int = 0,
    time_limit_s: float | None = None,
    capacity_step: float | None = None,
    epsilon: float | None = None,
) -> CachingResult:
    """Run one algorithm and return the result object (raises CachingAlgorithmError)."""
    start = time.perf_counter()
    ci = instance if isinstance(instance, CompiledInstance) else compile_instance(instance)
    placement, name = solve_placement(
        ci,
        algorithm,
        seed=seed,
        time_limit_s=time_limit_s,
        capacity_step=capacity_step,
        epsilon=epsilon,
    )
    runtime = time.perf_counter() - start
    if not ci.respects_capacities(placement):  # every algorithm guarantees it; never silent
        raise AssertionError(f"{name} returned a placement over a capacity")
    used = ci.capacity_used(placement)
    return CachingResult(
        placement=ci.to_placement(placement),
        expected_latency_s=expected_latency(ci, placement),
        saving_s=saving(ci, placement),
        capacity_used={s: float(u) for s, u in zip(ci.server_ids, used, strict=True)},
        algorithm=name,
        runtime_s=runtime,
    )


def plan(
    instance: CachingInstance,
    algorithm: str | None = None,
    *,
    seed: int = 0,
    exact_time_limit_s: float = EXACT_TIME_LIMIT_S,
) -> CachingResult:
    """What ``moe2 cache-plan`` prints: the default algorithm unless one is named.

    ``exact`` stops after ``exact_time_limit_s`` (then reported as ``exact-time-limited``).
    """
    return solve(
        instance,
        algorithm or default_algorithm(instance),
        seed=seed,
        time_limit_s=exact_time_limit_s,
    )


__all__ = [
    "ALGORITHMS",
    "CachingAlgorithmError",
    "CachingResult",
    "default_algorithm",
    "plan",
    "solve",
    "solve_placement",
]
