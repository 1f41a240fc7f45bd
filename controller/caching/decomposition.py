"""K >= 1: successive greedy decomposition (``sgd``) and its max-convolution version.

The method
----------
Servers are taken one at a time, fastest first (ascending sum_u w_u t_{u,m}; ties: larger
capacity first, then instance order). Server m's *subproblem* keeps what the earlier servers cache
and chooses the set T of items for m that saves the most latency on top of them, within Q_m:

    max_T  F(S_<m u T) - F(S_<m)    subject to  sum_{n in T} size_n <= Q_m.

The gain separates over *groups*: only members that caching on m would make faster (the user's
current served latency above t_{u,m}) matter, and two such members of one activated set depend
on each other (the set's latency is the max over its members). Within a layer the items linked by
such sets form connected components (union-find over the sets); the gain is the sum over
components of a function of T restricted to the component. With K = 1 every component is a single
item (the subproblem is a plain 0/1 knapsack); with K >= 2 co-activated experts form larger ones.

Per component a *value curve* lists candidate subsets with their size in capacity units and their
exact gain (evaluated over the component's activated sets, nothing estimated):

* components of at most ``exact_limit`` items (default 10): every subset (2^k of them) -- the curve
  is then the component's exact best value for every capacity;
* larger ones (e.g. one 64-expert layer with K = 2): the prefixes of a greedy chain. Each step adds
  either the single item or the group of items that completes one activated set (all its members
  that are still slow) with the largest gain per unit size, gains of groups estimated by their
  members' single gains plus the exact extra of completing that set; the chain's values are then
  evaluated exactly. Completing sets is what lets the chain follow co-activation: a single expert of
  a pair saves nothing until its partner is fast too, so a singles-only greedy stalls at zero. The
  chains of all large components of a server are built together, vectorised.
  Effect: the curve of a large component is a lower bound on its best value per capacity (at most
  k + 1 points instead of 2^k subsets). Measured in ``benchmarks/caching.py`` (1b): forcing chains
  on every component of small instances (6-10 experts per layer) instead of enumerating them.
  A static order instead (experts sorted once by their share of the sets' gains, prefixes
  evaluated) ended 0.9 % higher in latency on the benchmark's large instance; the adaptive chain
  is what ships.

A knapsack over the components' curves and the server's capacity then picks one candidate per
component: ``sgd`` with the plain dynamic programme, ``sgd_maxconv`` with the (max,+) convolution
tree (``knapsack``). Sizes become integer units of a declared step (``capacity_step``; by default
the largest step that represents every size exactly, if the largest capacity is then at most
``DEFAULT_MAX_UNITS`` units, else the largest capacity / ``DEFAULT_MAX_UNITS``). Sizes are rounded
up and capacities down, so every capacity holds; a final pass adds items with positive gain that
still fit the true remaining capacity (what rounding left unused), best gain per size first.

Refinement (by default on instances of at most ``REFINE_MAX_PAIRS`` server x item pairs; both
``sgd`` and ``sgd_maxconv`` alike): every server order when there are at most ``MAX_ORDERS_ALL``
(3 servers: 6), one more start from ``joint_completion_greedy`` (moves that complete an activated
set across servers), then ``DEFAULT_SWEEPS`` sweep(s) re-solving each server's subproblem given all
the other servers (kept only when the saving rises); the best placement wins. The weakness this
addresses: a pair whose two experts fit only on two different servers. Server by server, the first
server gains nothing from half a pair and leaves it, and so does the second: the plain pass can
miss such savings entirely (measured worst ratios on the random instances are in
``docs/caching.md``). Large instances get the plain pass (one order, fastest first).

What is guaranteed
------------------
* Capacities, always (rounded sizes, then an exact check).
* Per server: ``sgd`` solves the subproblem exactly over the curves; when every component is
  enumerated exhaustively and the sizes are exact multiples of the step, that is the exact optimum
  of the subproblem. ``sgd_maxconv`` reaches at least (1 - epsilon) of the plain DP's subproblem
  value on the same curves (proof in ``knapsack``); the two runs then diverge (later servers see
  different earlier choices), so end to end this is not a guarantee between the two -- measured.
* K = 1, exact subproblems (components are single items, so the curves are exact; sizes on the
  grid): the server-by-server argument of ``greedy`` (monotone submodular saving, one knapsack per
  server, each solved optimally, alpha = 1) gives F >= F*/2 for the plain pass; with maxconv,
  alpha = 1 - epsilon and F >= (1 - eps)/(2 - eps) F*. Refinement only keeps a better placement.
* K >= 2: the saving is not submodular and we prove no approximation ratio for the whole
  placement (the cross-server pairs above show the plain pass can be arbitrarily far from the
  optimum). Measured against the MILP optimum in ``benchmarks/caching.py``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from controller.caching.compiled import CAPACITY_RTOL, BoolArray, CompiledInstance, FloatArray
from controller.caching.knapsack import DEFAULT_EPSILON, Curve, pareto, solve_dense, solve_maxconv

DEFAULT_EXACT_LIMIT = 10
DEFAULT_MAX_UNITS = 2048
# Improvement sweeps after the successive pass (each re-solves every server given the others).
DEFAULT_SWEEPS = 1
# Every server order is tried when there are at most this many (3 servers: 6 orders).
MAX_ORDERS_ALL = 6
# Small instances also start from ``joint_completion_greedy`` (exact gains; cost grows fast).
JOINT_START_MAX_PAIRS = 200
JOINT_START_MAX_SETS = 400
# Instances up to this many (server, item) pairs are refined by default.
REFINE_MAX_PAIRS = 2000
# Subset enumeration of a component is skipped (chain instead) above this many cells.
MAX_ENUM_CELLS = 4_000_000
_TINY = 1e-300


@dataclass
class Timing:
    curves_s: float = 0.0
    knapsack_s: float = 0.0
    fill_s: float = 0.0


@dataclass
class DecompositionResult:
    placement: BoolArray
    step: float
    timing: Timing = field(default_factory=Timing)


def server_order(ci: CompiledInstance) -> list[int]:
    """Fastest first: ascending weighted latency, then larger capacity, then instance order."""
    w = ci.weight if ci.weight.sum() > 0 else np.ones_like(ci.weight)
    mean = w @ ci.latency
    return sorted(range(ci.n_servers), key=lambda m: (float(mean[m]), -ci.capacity[m], m))


# ---- capacity units -------------------------------------------------------------------------


def _float_gcd(values: FloatArray, tol: float) -> float:
    g = 0.0
    for v in values:
        a, b = max(g, float(v)), min(g, float(v))
        while b > tol:
            a, b = b, math.fmod(a, b)
        g = a
    return g


def default_step(ci: CompiledInstance, max_units: int = DEFAULT_MAX_UNITS) -> float:
    """The capacity step used when none is declared (module docstring)."""
    top = float(ci.capacity.max()) if ci.n_servers else 0.0
    sizes = ci.size[ci.size > 0]
    if top <= 0 or not len(sizes):
        return 1.0
    g = _float_gcd(sizes, 1e-9 * float(sizes.max()))
    exact = g > 0 and bool(np.all(np.abs(sizes / g - np.round(sizes / g)) < 1e-6))
    if exact and top / g <= max_units:
        return g
    return top / max_units


def to_units(ci: CompiledInstance, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(item sizes rounded up, capacities rounded down) in integer units of ``step``."""
    if not step > 0:
        raise ValueError(f"capacity step must be positive, got {step}")
    x = ci.size / step
    size_units = np.ceil(x - 1e-9 * np.maximum(x, 1.0)).astype(np.int64)
    y = ci.capacity / step
    cap_units = np.floor(y + 1e-9 * np.maximum(y, 1.0)).astype(np.int64)
    return np.maximum(size_units, 0), np.maximum(cap_units, 0)


# ---- one server's subproblem ------------------------------------------------------------------


@dataclass
class _Sets:
    """The activated sets that caching on one server can speed up, from the current state."""

    weight: FloatArray  # (S,)
    members: np.ndarray  # (S, K) item ids, -1 padding
    lat: FloatArray  # (S, K) current served latency (-inf padding)
    imp: FloatArray  # (S, K) latency if cached on this server (= lat when it cannot improve)
    movable: np.ndarray  # (S, K) bool: member that this server would make faster


def _server_sets(
    ci: CompiledInstance, served: FloatArray, server: int, units: np.ndarray, cap_units: int
) -> _Sets:
    members = ci.members
    valid = members >= 0
    idx = np.where(valid, members, 0)
    lat = np.where(valid, served[ci.set_user[:, None], idx], -np.inf)
    t_m = ci.latency[ci.set_user, server][:, None]
    movable = valid & (t_m < lat) & (units[idx] <= cap_units)
    imp = np.where(movable, t_m, lat)
    gain = lat.max(axis=1) - imp.max(axis=1)
    keep = (gain > 0) & (ci.set_weight > 0)
    return _Sets(ci.set_weight[keep], members[keep], lat[keep], imp[keep], movable[keep])


def _components(sets: _Sets, n_items: int) -> tuple[int, np.ndarray]:
    """Connected components of items linked by movable members of one set."""
    rows, cols = [], []
    first = np.where(sets.movable.any(axis=1), np.argmax(sets.movable, axis=1), -1)
    for j in range(sets.members.shape[1]):
        ok = sets.movable[:, j] & (first >= 0)
        rows.append(sets.members[ok, j])
        cols.append(sets.members[ok, first[ok]])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.intp)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.intp)
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items))
    return connected_components(graph, directed=False)


def _enumerate(
    k: int, local: np.ndarray, sets_w: FloatArray, lat: FloatArray, imp: FloatArray
) -> tuple[np.ndarray, FloatArray]:
    """Every subset of k local items: (membership bits (2^k, k), exact gains (2^k,))."""
    bits = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)
    base = lat.max(axis=1)
    inside = np.where(local[None] >= 0, bits[:, np.maximum(local, 0)], False)  # (B, S, K)
    eff = np.where(inside, imp[None], lat[None])
    return bits, (base[None] - eff.max(axis=2)) @ sets_w


@dataclass
class _ChainInput:
    """Large components, batched: items and sets concatenated, sorted by component."""

    item_comp: np.ndarray  # (I,)
    units: np.ndarray  # (I,)
    set_comp: np.ndarray  # (S,)
    weight: FloatArray  # (S,)
    local: np.ndarray  # (S, K): batch item position of a movable member, else -1
    lat: FloatArray  # (S, K)
    imp: FloatArray  # (S, K)


def _segment_best(
    values: FloatArray, comp: np.ndarray, n_comp: int
) -> tuple[FloatArray, np.ndarray]:
    """Per component (``comp`` sorted): the largest value and the first index reaching it."""
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


def _chains(x: _ChainInput, n_comp: int, cap_units: int) -> list[list[tuple[list[int], float]]]:
    """Greedy chains with set completion (module docstring), all components at once.

    Returns per component the steps (batch positions added, exact value after the step). Arrays
    are laid out (K, S) so that reductions over a set's members are elementwise; sets whose
    movable members are all chosen are resolved and dropped.
    """
    lat, imp, loc_all = x.lat.T.copy(), x.imp.T.copy(), x.local.T.copy()
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
    steps: list[list[tuple[list[int], float]]] = [[] for _ in range(n_comp)]
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
        r_s = np.where(ok_s, single / np.maximum(units, _TINY), -np.inf)
        r_s = np.where(ok_s & (units == 0), np.inf, r_s)
        ok_g = (cand.sum(axis=0) >= 2) & (group_units <= room[set_comp]) & (group_gain > 0)
        r_g = np.where(ok_g, group_gain / np.maximum(group_units, _TINY), -np.inf)
        r_g = np.where(ok_g & (group_units == 0), np.inf, r_g)
        best_s, at_s = _segment_best(r_s, item_comp, n_comp)
        best_g, at_g = _segment_best(r_g, set_comp, n_comp)
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
        if done.sum() * 4 > len(w):  # compact when a quarter of the sets are resolved
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


@dataclass
class _Group:
    items: np.ndarray  # global item ids
    subsets: list[np.ndarray]  # per curve point: global item ids


def _subproblem(
    ci: CompiledInstance,
    served: FloatArray,
    server: int,
    units: np.ndarray,
    cap_units: int,
    exact_limit: int,
) -> tuple[list[Curve], list[_Group]]:
    sets = _server_sets(ci, served, server, units, cap_units)
    if not len(sets.weight):
        return [], []
    _, label = _components(sets, ci.n_items)
    involved = np.unique(sets.members[sets.movable])
    comp_of_set = label[sets.members[np.arange(len(sets.weight)), np.argmax(sets.movable, axis=1)]]
    comps = np.unique(label[involved])
    size_of = np.bincount(label[involved], minlength=int(label.max()) + 1)
    curves: list[Curve] = []
    groups: list[_Group] = []

    # single-item components (all of them when K = 1): gains in one vectorised pass
    singles = involved[size_of[label[involved]] == 1]
    if len(singles):
        in_single = np.isin(comp_of_set, label[singles])
        w = sets.weight[in_single]
        gain = w * (sets.lat[in_single].max(axis=1) - sets.imp[in_single].max(axis=1))
        item = sets.members[in_single][
            np.arange(int(in_single.sum())), np.argmax(sets.movable[in_single], axis=1)
        ]
        value = np.bincount(item, weights=gain, minlength=ci.n_items)
        for n in singles:
            curve = pareto(
                np.array([0, units[n]]),
                np.array([0.0, value[n]]),
                np.array([0, 1]),
                cap_units,
            )
            curves.append(curve)
            groups.append(_Group(np.array([n]), [np.zeros(0, dtype=np.intp), np.array([n])]))

    order = np.argsort(comp_of_set, kind="stable")
    bounds = np.searchsorted(comp_of_set[order], comps)
    ends = np.searchsorted(comp_of_set[order], comps, side="right")
    large: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (items, set rows, local)
    for comp, lo, hi in zip(comps, bounds, ends, strict=True):
        if size_of[comp] == 1:
            continue
        rows = order[lo:hi]
        items = involved[label[involved] == comp]
        local_of = -np.ones(ci.n_items, dtype=np.intp)
        local_of[items] = np.arange(len(items))
        local = np.where(sets.movable[rows], local_of[np.maximum(sets.members[rows], 0)], -1)
        k = len(items)
        if k <= exact_limit and (2**k) * local.size <= MAX_ENUM_CELLS:
            w, lat, imp = sets.weight[rows], sets.lat[rows], sets.imp[rows]
            bits, value = _enumerate(k, local, w, lat, imp)
            curves.append(pareto(bits @ units[items], value, np.arange(len(value)), cap_units))
            groups.append(_Group(items, [items[bits[i]] for i in range(len(value))]))
        else:
            large.append((items, rows, local))
    if large:
        offsets = np.cumsum([0] + [len(items) for items, _, _ in large])
        all_items = np.concatenate([items for items, _, _ in large])
        all_rows = np.concatenate([rows for _, rows, _ in large])
        batch = _ChainInput(
            item_comp=np.repeat(np.arange(len(large)), [len(i) for i, _, _ in large]),
            units=units[all_items],
            set_comp=np.repeat(np.arange(len(large)), [len(r) for _, r, _ in large]),
            weight=sets.weight[all_rows],
            local=np.concatenate(
                [np.where(lo >= 0, lo + offsets[c], -1) for c, (_, _, lo) in enumerate(large)]
            ),
            lat=sets.lat[all_rows],
            imp=sets.imp[all_rows],
        )
        for c, steps in enumerate(_chains(batch, len(large), cap_units)):
            items = large[c][0]
            prefix: list[int] = []
            subsets = [np.zeros(0, dtype=np.intp)]
            sizes, values = [0], [0.0]
            for added, value in steps:
                prefix = prefix + [int(i - offsets[c]) for i in added]
                subsets.append(items[np.array(prefix, dtype=np.intp)])
                sizes.append(int(units[subsets[-1]].sum()))
                values.append(value)
            curves.append(
                pareto(np.array(sizes), np.array(values), np.arange(len(values)), cap_units)
            )
            groups.append(_Group(items, subsets))
    return curves, groups


def solve_server(
    ci: CompiledInstance,
    served: FloatArray,
    server: int,
    units: np.ndarray,
    cap_units: int,
    *,
    method: str,
    epsilon: float = DEFAULT_EPSILON,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    timing: Timing | None = None,
) -> np.ndarray:
    """The items server ``server`` should cache given the served latencies so far."""
    import time

    t0 = time.perf_counter()
    curves, groups = _subproblem(ci, served, server, units, cap_units, exact_limit)
    t1 = time.perf_counter()
    if not curves:
        chosen = np.zeros(0, dtype=np.intp)
    else:
        if method == "dp":
            _, picks = solve_dense(curves, cap_units)
        else:
            _, picks = solve_maxconv(curves, cap_units, epsilon)
        parts = [g.subsets[int(c.option[p])] for c, g, p in zip(curves, groups, picks, strict=True)]
        chosen = np.concatenate(parts).astype(np.intp) if parts else np.zeros(0, dtype=np.intp)
    if timing is not None:
        timing.curves_s += t1 - t0
        timing.knapsack_s += time.perf_counter() - t1
    return chosen


def _fill(ci: CompiledInstance, placement: BoolArray, order: list[int]) -> None:
    """Add items with positive exact gain that still fit, best gain per size first."""
    from controller.caching.latency import served_latency

    served = served_latency(ci, placement)
    no_units = np.zeros(ci.n_items, dtype=np.int64)  # no unit limit here: true sizes below
    for m in order:
        sets = _server_sets(ci, served, m, no_units, 0)
        room = float(ci.capacity[m] - ci.capacity_used(placement[m : m + 1])[0])
        slack = CAPACITY_RTOL * max(float(ci.capacity[m]), 1.0)
        while len(sets.weight):
            fits = (~placement[m]) & (ci.size <= room + slack)
            gain = np.where(fits, _single_gains(sets, ci.n_items), 0.0)
            if not (gain > 0).any():
                break
            ratio = np.where(ci.size > 0, gain / np.maximum(ci.size, _TINY), np.inf)
            n = int(np.argmax(np.where(gain > 0, ratio, -np.inf)))
            placement[m, n] = True
            room -= float(ci.size[n])
            served[:, n] = np.minimum(served[:, n], ci.latency[:, m])
            hit = sets.movable & (sets.members == n)
            sets.lat = np.where(hit, sets.imp, sets.lat)
            sets.movable = sets.movable & ~hit


def _single_gains(sets: _Sets, n_items: int) -> FloatArray:
    """Exact gain of caching each single item on the server (others unchanged)."""
    eff = sets.lat
    width = eff.shape[1]
    cols = np.arange(width)[None, :]
    top = eff.max(axis=1)
    j1 = np.argmax(eff, axis=1)
    second = np.where(cols == j1[:, None], -np.inf, eff).max(axis=1)
    other = np.where(cols == j1[:, None], second[:, None], top[:, None])
    contrib = np.where(
        sets.movable, sets.weight[:, None] * (top[:, None] - np.maximum(other, sets.imp)), 0.0
    )
    return np.bincount(sets.members[sets.movable], weights=contrib[sets.movable], minlength=n_items)


def joint_completion_greedy(ci: CompiledInstance) -> BoolArray:
    """A start for small instances: greedy over moves that may span servers.

    A move is one (server, item) pair, or the completion of one activated set: each of its
    members that is still slow for the set's user goes to the server, among those with room,
    that serves that user fastest (largest members placed first). Each step takes the move with
    the largest exact gain per size (``latency.saving`` of the whole placement), until no move
    gains. Unlike the server-by-server pass, it can put the two experts of a pair on two
    different servers when neither server could hold both.
    """
    from controller.caching.latency import saving, served_latency

    placement = ci.empty()
    used = np.zeros(ci.n_servers)
    current = 0.0
    fastest = ci.latency.min(axis=1) if ci.n_servers else ci.fallback
    while True:
        served = served_latency(ci, placement)
        moves: dict[frozenset[tuple[int, int]], None] = {}
        for m in range(ci.n_servers):
            for n in np.flatnonzero(~placement[m]):
                if ci.fits(m, used[m], float(ci.size[n])):
                    moves[frozenset({(m, int(n))})] = None
        for s in np.flatnonzero(ci.set_weight > 0):
            u = int(ci.set_user[s])
            slow = [int(n) for n in ci.members[s] if n >= 0 and served[u, n] > fastest[u]]
            if len(slow) < 2:
                continue
            room = used.copy()
            move: set[tuple[int, int]] = set()
            for n in sorted(slow, key=lambda n: -ci.size[n]):
                options = [
                    m
                    for m in np.argsort(ci.latency[u], kind="stable")
                    if ci.latency[u, m] < served[u, n]
                    and not placement[m, n]
                    and ci.fits(int(m), room[m], float(ci.size[n]))
                ]
                if options:
                    m = int(options[0])
                    room[m] += ci.size[n]
                    move.add((m, n))
            if len(move) >= 2:
                moves[frozenset(move)] = None
        best_ratio, best_move, best_value = 0.0, None, current
        for move in moves:
            trial = placement.copy()
            for m, n in move:
                trial[m, n] = True
            value = saving(ci, trial)
            size = sum(float(ci.size[n]) for _, n in move)
            gain = value - current
            if gain <= 1e-15:
                continue
            ratio = np.inf if size <= 0 else gain / size
            if ratio > best_ratio:
                best_ratio, best_move, best_value = ratio, move, value
        if best_move is None:
            return placement
        for m, n in best_move:
            placement[m, n] = True
            used[m] += ci.size[n]
        current = best_value


def successive_decomposition(
    ci: CompiledInstance,
    *,
    method: str = "maxconv",
    capacity_step: float | None = None,
    epsilon: float = DEFAULT_EPSILON,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    fill: bool = True,
    refine: bool | None = None,
    sweeps: int = DEFAULT_SWEEPS,
) -> DecompositionResult:
    """``sgd`` (method "dp") or ``sgd_maxconv`` (method "maxconv"); see the module docstring.

    ``refine`` (default: only when servers x items <= ``REFINE_MAX_PAIRS``): run every server
    order (when there are at most ``MAX_ORDERS_ALL``), also start from
    ``joint_completion_greedy`` (when small enough), then ``sweeps`` improvement sweeps, and keep
    the best. Without it: one successive pass, fastest server first, and the fill pass.
    """
    import time

    from controller.caching.latency import saving, served_latency

    if method not in ("dp", "maxconv"):
        raise ValueError(f"method must be 'dp' or 'maxconv', got {method!r}")
    step = capacity_step if capacity_step is not None else default_step(ci)
    units, cap_units = to_units(ci, step)
    timing = Timing()
    if refine is None:
        refine = ci.n_servers * ci.n_items <= REFINE_MAX_PAIRS
    first = server_order(ci)
    orders = [first]
    if refine and math.factorial(ci.n_servers) <= MAX_ORDERS_ALL:
        orders += [list(p) for p in itertools.permutations(first) if list(p) != first]
    starts: list[tuple[list[int], BoolArray | None]] = [(order, None) for order in orders]
    if (
        refine
        and ci.n_servers * ci.n_items <= JOINT_START_MAX_PAIRS
        and len(ci.set_weight) <= JOINT_START_MAX_SETS
    ):
        starts.append((first, joint_completion_greedy(ci)))
    if not refine:
        sweeps = 0
    best: BoolArray | None = None
    best_saving = -np.inf
    for order, start in starts:

        def solve_m(m: int, served: FloatArray) -> np.ndarray:
            return solve_server(
                ci,
                served,
                m,
                units,
                int(cap_units[m]),
                method=method,
                epsilon=epsilon,
                exact_limit=exact_limit,
                timing=timing,
            )

        if start is not None:
            placement = start
        else:
            placement = ci.empty()
            served = served_latency(ci, placement)
            for m in order:
                chosen = solve_m(m, served)
                placement[m, chosen] = True
                served[:, chosen] = np.minimum(served[:, chosen], ci.latency[:, m][:, None])
        t0 = time.perf_counter()
        repair_capacities(ci, placement)
        if fill:
            _fill(ci, placement, order)
        timing.fill_s += time.perf_counter() - t0
        current = saving(ci, placement)
        for _ in range(sweeps):
            improved = False
            for m in order:
                trial = placement.copy()
                trial[m] = False
                trial[m, solve_m(m, served_latency(ci, trial))] = True
                repair_capacities(ci, trial)
                if fill:
                    _fill(ci, trial, order)
                value = saving(ci, trial)
                if value > current + 1e-12 * max(abs(current), 1e-300):
                    placement, current, improved = trial, value, True
            if not improved:
                break
        if current > best_saving:
            best, best_saving = placement, current
    assert best is not None
    return DecompositionResult(best, step, timing)


def independent(
    ci: CompiledInstance,
    *,
    capacity_step: float | None = None,
    epsilon: float = DEFAULT_EPSILON,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
) -> BoolArray:
    """Per-server independent caching: each server solves its subproblem as if it were alone."""
    from controller.caching.latency import served_latency

    step = capacity_step if capacity_step is not None else default_step(ci)
    units, cap_units = to_units(ci, step)
    placement = ci.empty()
    alone = served_latency(ci, placement)
    for m in range(ci.n_servers):
        chosen = solve_server(
            ci,
            alone,
            m,
            units,
            int(cap_units[m]),
            method="maxconv",
            epsilon=epsilon,
            exact_limit=exact_limit,
        )
        placement[m, chosen] = True
    repair_capacities(ci, placement)
    return placement


def repair_capacities(ci: CompiledInstance, placement: BoolArray) -> None:
    """Drop the largest items of any server over its capacity (never expected: a safety net)."""
    while not ci.respects_capacities(placement):
        used = ci.capacity_used(placement)
        m = int(np.argmax(used - ci.capacity))
        items = np.flatnonzero(placement[m])
        placement[m, items[np.argmax(ci.size[items])]] = False
