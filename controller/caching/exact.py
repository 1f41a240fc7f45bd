"""The exact optimum of small caching instances by mixed-integer programming (SciPy's HiGHS).

Variables (only those that can matter are created):

* x_{m,n} in {0, 1}: server m caches item n = (layer, expert); only when the item fits alone.
* y_{u,n,m} in [0, 1]: user u gets item n served by server m; only for servers faster than the
  user's fallback. sum_m y_{u,n,m} <= 1 and y_{u,n,m} <= x_{m,n}; the rest of the unit mass is
  the fallback. The served latency of (u, n) is then the linear expression
  d_{u,n} = t_{u,0} - sum_m (t_{u,0} - t_{u,m}) y_{u,n,m}.
* z_s >= 0 per activated set s = (u, l, A): z_s >= d_{u,n} for every n in A. This linearises the
  max over activated experts: minimising, z_s settles at max_{n in A} d_{u,n}.

Objective: minimise sum_s w_s z_s subject to sum_n size_n x_{m,n} <= Q_m for every server.

For fixed binary x the best y puts each (u, n) on its fastest server caching n (an extreme point of
the y-polytope), so y may stay continuous: the optimum of the MILP is the optimum of the caching
problem. The objective is shifted and scaled (to lie in [0, 1] between "everything on the fastest
server" and "nothing cached") so HiGHS's absolute gap tolerance cannot stop it early on instances
whose latencies are small numbers; the relative gap is set to 1e-9. The result is re-evaluated
exactly by ``latency.expected_latency``.

The MILP has sum over users of (items in their sets) x (servers) continuous variables and one
constraint per set member: meant for small instances (the benchmark's 2-3 servers, 1-3 layers of
3-6 experts solve in milliseconds). ``time_limit_s`` stops HiGHS; the best placement found is then
returned with ``proven_optimal = False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from controller.caching.compiled import BoolArray, CompiledInstance

MIP_REL_GAP = 1e-9


@dataclass(frozen=True)
class ExactResult:
    placement: BoolArray
    proven_optimal: bool
    status: str


def solve_exact(ci: CompiledInstance, time_limit_s: float | None = None) -> ExactResult:
    """The optimal placement (see the module docstring)."""
    n_servers, n_items = ci.n_servers, ci.n_items
    fits = ci.size[None, :] <= ci.capacity[:, None] * (1 + 1e-12)  # (M, N)
    useful_set = ci.set_weight > 0
    # Items each user activates with positive weight.
    pairs: dict[tuple[int, int], int] = {}
    for s in np.flatnonzero(useful_set):
        u = int(ci.set_user[s])
        for n in ci.members[s]:
            if n >= 0:
                pairs.setdefault((u, int(n)), len(pairs))
    x_index = -np.ones((n_servers, n_items), dtype=np.intp)
    n_var = 0
    for m, n in zip(*np.nonzero(fits), strict=True):
        x_index[m, n] = n_var
        n_var += 1
    n_x = n_var
    y_index: dict[tuple[int, int, int], int] = {}
    for u, n in pairs:
        for m in range(n_servers):
            if x_index[m, n] >= 0 and ci.latency[u, m] < ci.fallback[u]:
                y_index[(u, n, m)] = n_var
                n_var += 1
    sets = np.flatnonzero(useful_set)
    z_index = {int(s): n_var + k for k, s in enumerate(sets)}
    n_var += len(sets)
    if n_x == 0 or not len(sets):
        return ExactResult(ci.empty(), True, "nothing can be cached usefully")

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def add_row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(lower)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lower.append(lo)
        upper.append(hi)

    for m in range(n_servers):
        entries = [(int(x_index[m, n]), float(ci.size[n])) for n in np.flatnonzero(fits[m])]
        if entries:
            add_row(entries, -np.inf, float(ci.capacity[m]))
    by_pair: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (u, n, m), v in y_index.items():
        by_pair.setdefault((u, n), []).append((m, v))
        add_row([(v, 1.0), (int(x_index[m, n]), -1.0)], -np.inf, 0.0)  # y <= x
    for entries_mv in by_pair.values():
        add_row([(v, 1.0) for _, v in entries_mv], -np.inf, 1.0)
    for s, z in z_index.items():
        u = int(ci.set_user[s])
        t0 = float(ci.fallback[u])
        for n in ci.members[s]:
            if n < 0:
                continue
            # z + sum_m (t0 - t_um) y_unm >= t0
            entries = [(z, 1.0)] + [
                (v, t0 - float(ci.latency[u, m])) for m, v in by_pair.get((u, int(n)), [])
            ]
            add_row(entries, t0, np.inf)

    weights = ci.set_weight[sets]
    nothing = float(np.dot(weights, ci.fallback[ci.set_user[sets]]))
    fastest = np.minimum(ci.latency.min(axis=1), ci.fallback) if n_servers else ci.fallback
    best_case = float(np.dot(weights, fastest[ci.set_user[sets]]))
    scale = max(nothing - best_case, 1e-300)
    c = np.zeros(n_var)
    c[[z_index[int(s)] for s in sets]] = weights / scale
    integrality = np.zeros(n_var)
    integrality[:n_x] = 1
    a = coo_matrix((vals, (rows, cols)), shape=(len(lower), n_var)).tocsr()
    options: dict[str, float | bool] = {"mip_rel_gap": MIP_REL_GAP, "disp": False}
    if time_limit_s is not None:
        options["time_limit"] = float(time_limit_s)
    res = milp(
        c,
        constraints=LinearConstraint(a, np.array(lower), np.array(upper)),
        integrality=integrality,
        bounds=Bounds(
            np.zeros(n_var),
            np.concatenate([np.ones(n_var - len(sets)), np.full(len(sets), np.inf)]),
        ),
        options=options,
    )
    if res.x is None:
        return ExactResult(ci.empty(), False, f"HiGHS found no solution: {res.message}")
    placement = ci.empty()
    for m, n in zip(*np.nonzero(x_index >= 0), strict=True):
        placement[m, n] = res.x[x_index[m, n]] > 0.5
    repaired = _repair(ci, placement)
    _prune(ci, placement)
    return ExactResult(placement, bool(res.status == 0) and not repaired, str(res.message))


def _prune(ci: CompiledInstance, placement: BoolArray) -> None:
    """Drop cached items whose removal leaves the expected latency unchanged.

    The MILP is indifferent to useless copies (x = 1 where nothing is gained); dropping them keeps
    the optimum and gives a plan without experts loaded for nothing.
    """
    from controller.caching.latency import expected_latency

    best = expected_latency(ci, placement)
    for m, n in zip(*np.nonzero(placement), strict=True):
        placement[m, n] = False
        if expected_latency(ci, placement) > best + 1e-12 * max(abs(best), 1.0):
            placement[m, n] = True


def _repair(ci: CompiledInstance, placement: BoolArray) -> bool:
    """Drop the largest items of a server whose rounded placement exceeds its capacity.

    HiGHS accepts integers within its tolerance (1e-6), so a rounded x could exceed a capacity by
    a hair; this never happens on instances whose sizes are not within 1e-6 of a capacity.
    """
    repaired = False
    while not ci.respects_capacities(placement):
        repaired = True
        used = ci.capacity_used(placement)
        m = int(np.argmax(used - ci.capacity))
        items = np.flatnonzero(placement[m])
        placement[m, items[np.argmax(ci.size[items])]] = False
    return repaired
