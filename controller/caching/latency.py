"""The exact expected latency of a placement (docs/design.md section 4), its saving and capacities.

For a placement x (x_{m,l,e} = 1: server m caches expert e of layer l) the expected latency is the
formula as written, with the user weights as given (they are NOT normalised: weights 2 and 2 give
twice the latency of weights 1 and 1; normalise them in the instance if a mean is wanted):

    T(x) = sum_u w_u sum_l sum_A pi_{u,l}(A) max_{e in A} min(t_{u,0}, min_{m: x_mle = 1} t_{u,m})

An activated expert runs on the fastest server that caches it (for that user), or falls back;
the layer waits for the slowest of its activated experts. The *saving* of x is T(nothing cached)
- T(x) >= 0, with T(nothing cached) = sum_u w_u * (number of layers) * t_{u,0}. Both are exact
(a finite sum over the instance's activated sets, no sampling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from controller.caching.compiled import BoolArray, CompiledInstance, FloatArray, compile_instance
from controller.caching.instance import CachingInstance


def served_latency(ci: CompiledInstance, placement: BoolArray) -> FloatArray:
    """(U, N): the latency at which each user gets each item served under the placement."""
    lat = np.where(placement[None, :, :], ci.latency[:, :, None], np.inf)  # (U, M, N)
    best = lat.min(axis=1) if ci.n_servers else np.full((len(ci.user_ids), ci.n_items), np.inf)
    return np.minimum(best, ci.fallback[:, None])


def set_latency(ci: CompiledInstance, served: FloatArray) -> FloatArray:
    """(S,): the latency of each activated set: its slowest member as served."""
    if not len(ci.set_user):
        return np.zeros(0)
    idx = np.where(ci.members >= 0, ci.members, 0)
    lat = served[ci.set_user[:, None], idx]
    return np.where(ci.members >= 0, lat, -np.inf).max(axis=1)


def expected_latency(ci: CompiledInstance, placement: BoolArray) -> float:
    """T(x), seconds (see the module docstring)."""
    return float(np.dot(ci.set_weight, set_latency(ci, served_latency(ci, placement))))


def nothing_cached_latency(ci: CompiledInstance) -> float:
    """T(nothing cached): every expert falls back."""
    return expected_latency(ci, ci.empty())


def saving(ci: CompiledInstance, placement: BoolArray) -> float:
    """T(nothing cached) - T(x): what the placement saves, seconds."""
    served = served_latency(ci, placement)
    gain = ci.fallback[ci.set_user] - set_latency(ci, served)
    return float(np.dot(ci.set_weight, gain))


@dataclass(frozen=True)
class PlacementReport:
    expected_latency_s: float
    nothing_cached_latency_s: float
    saving_s: float
    capacity_used: dict[str, float]
    respects_capacities: bool


def evaluate_placement(
    instance: CachingInstance | CompiledInstance,
    placement: Mapping[str, Sequence[Sequence[object]]],
) -> PlacementReport:
    """Expected latency, saving and capacity use of a JSON placement (server -> [[l, e], ...]).

    Raises PlacementError for unknown servers, layers or experts.
    """
    ci = instance if isinstance(instance, CompiledInstance) else compile_instance(instance)
    x = ci.from_placement(placement)
    used = ci.capacity_used(x)
    return PlacementReport(
        expected_latency_s=expected_latency(ci, x),
        nothing_cached_latency_s=nothing_cached_latency(ci),
        saving_s=saving(ci, x),
        capacity_used={s: float(u) for s, u in zip(ci.server_ids, used, strict=True)},
        respects_capacities=ci.respects_capacities(x),
    )
