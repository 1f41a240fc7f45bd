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
  chains of all large components of a server are built together, vectorised, one step of every
  component at a time, and incrementally: a step changes only the sets that contain an item it
  adds, so only those sets' terms (each member's gain alone, the gain of completing the set) are
  recomputed; the items' single gains and the groups' gains are then re-added from the stored
  terms, in the order a full recomputation adds them, so the chains (items and values) are
  bit-identical to recomputing every gain over every set at every step (tested against that
  plain version). Arrays are laid out (members, sets) so that the work over a set's members is
  elementwise.
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
still fit the true remaining capacity (what rounding left unused), best gain per size first (its
exact single gains likewise updated only for the sets of the item just added).

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
from collections.abc import Iterator
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


def _row_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis of a (K, n) array, row after row (numpy's order for axis 0)."""
    total = a[0].copy()
    for row in a[1:]:
        total += row
    return total


def _row_max(a: np.ndarray) -> np.ndarray:
    """Max over the first axis of a (K, n) array, row after row (faster than ``max(axis=0)``)."""
    top = a[0].copy()
    for row in a[1:]:
        np.maximum(top, row, out=top)
    return top


def _take(a: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Columns ``cols`` of a (K, S) array (``np.take`` is much faster than ``a[:, cols]``)."""
    return a.take(cols, axis=1)


def _put(a: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
    """a[:, cols] = values, one member row at a time (faster than the 2-d assignment)."""
    for j in range(a.shape[0]):
        a[j][cols] = values[j]


@dataclass
class _Sets:
    """The activated sets that caching on one server can speed up, from the current state.

    Member arrays are laid out (K, S): row j holds the j-th member of every set, so that
    operations over a set's members are elementwise over rows (much faster in numpy than
    reductions along a short last axis).
    """

    weight: FloatArray  # (S,)
    members: np.ndarray  # (K, S) item ids, -1 padding
    lat: FloatArray  # (K, S) current served latency (-inf padding)
    imp: FloatArray  # (K, S) latency if cached on this server (= lat when it cannot improve)
    movable: np.ndarray  # (K, S) bool: member that this server would make faster


def _server_sets(
    ci: CompiledInstance, served: FloatArray, server: int, units: np.ndarray, cap_units: int
) -> _Sets:
    members = np.ascontiguousarray(ci.members.T)
    valid = members >= 0
    idx = np.where(valid, members, 0)
    lat = np.where(valid, served.ravel()[ci.set_user * ci.n_items + idx], -np.inf)
    t_m = ci.latency[ci.set_user, server]
    movable = valid & (t_m < lat) & (units[idx] <= cap_units)
    imp = np.where(movable, t_m, lat)
    gain = _row_max(lat) - _row_max(imp)
    keep = np.flatnonzero((gain > 0) & (ci.set_weight > 0))
    return _Sets(
        ci.set_weight[keep],
        _take(members, keep),
        _take(lat, keep),
        _take(imp, keep),
        _take(movable, keep),
    )


def _first_movable(movable: np.ndarray) -> np.ndarray:
    """(S,): the first movable member row of each set, -1 when none."""
    first = np.full(movable.shape[1], -1, dtype=np.intp)
    for j in range(movable.shape[0] - 1, -1, -1):
        first[movable[j]] = j
    return first


def _components(sets: _Sets, n_items: int) -> tuple[int, np.ndarray]:
    """Connected components of items linked by movable members of one set."""
    first = _first_movable(sets.movable)
    has = np.flatnonzero(first >= 0)
    anchor = sets.members[first[has], has]
    rows, cols = [], []
    for j in range(sets.members.shape[0]):
        ok = sets.movable[j, has]
        rows.append(sets.members[j, has[ok]])
        cols.append(anchor[ok])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.intp)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.intp)
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(n_items, n_items))
    return connected_components(graph, directed=False)


def _enumerate(
    k: int, local: np.ndarray, sets_w: FloatArray, lat: FloatArray, imp: FloatArray
) -> tuple[np.ndarray, FloatArray]:
    """Every subset of k local items: (membership bits (2^k, k), exact gains (2^k,)).

    ``local``, ``lat``, ``imp``: (K, S) for the component's sets; the sums run over (S, K)
    copies (small arrays), the layout the sums of earlier versions had: bit-identical gains."""
    local, lat, imp = (np.ascontiguousarray(a.T) for a in (local, lat, imp))
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
    local: np.ndarray  # (K, S): batch item position of a movable member, else -1
    lat: FloatArray  # (K, S)
    imp: FloatArray  # (K, S)


class _Segments:
    """Rows grouped by component (``comp`` sorted): per component the best value and its row."""

    def __init__(self, comp: np.ndarray, n_comp: int) -> None:
        self.comp = comp
        self.n_comp = n_comp
        new = np.concatenate([[True], comp[1:] != comp[:-1]])[: len(comp)]
        self.starts = np.flatnonzero(new)
        self.present = comp[self.starts]

    def best(self, values: FloatArray) -> tuple[FloatArray, np.ndarray]:
        """The largest value per component (-inf if none) and the first row reaching it."""
        best = np.full(self.n_comp, -np.inf)
        where = np.full(self.n_comp, -1, dtype=np.intp)
        if not len(values):
            return best, where
        best[self.present] = np.maximum.reduceat(values, self.starts)
        hit = np.flatnonzero((values == best[self.comp]) & (values > -np.inf))
        comp = self.comp[hit]
        first = np.concatenate([[True], comp[1:] != comp[:-1]])[: len(comp)]
        where[comp[first]] = hit[first]
        return best, where


def _set_terms(
    w: FloatArray, eff: FloatArray, imp: FloatArray, cand: np.ndarray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per set (columns of (K, S) arrays): the latency ``top``; each candidate member's gain
    alone ``contrib`` (the set then waits for the slowest other member); the gain ``full`` of
    making every candidate fast; ``contrib`` summed over the members."""
    top = eff[0].copy()
    arg = np.zeros(eff.shape[1], dtype=np.intp)  # the first member reaching ``top``
    for j in range(1, eff.shape[0]):
        arg[eff[j] > top] = j
        np.maximum(top, eff[j], out=top)
    first = np.arange(eff.shape[0])[:, None] == arg
    other = np.where(first, _row_max(np.where(first, -np.inf, eff)), top)
    contrib = np.where(cand, w * (top - np.maximum(other, imp)), 0.0)
    full = w * (top - _row_max(np.where(cand, imp, eff)))
    return top, contrib, full, _row_sum(contrib)


@dataclass
class _LiveSets:
    """The chain's sets that still have a candidate (movable, not chosen) member, laid out (K, S)
    so that operations over a set's members are elementwise, with their current terms.

    Sets are dropped (``compact``) once a quarter of them have no candidate left, their saving
    moved into the caller's ``resolved``. ``entry_row`` / ``entry_set`` (by batch item, bounds in
    ``indptr``) are the movable entries: member row and batch set; ``where`` maps a batch set to
    its live column (an entry of an item not yet chosen is always in a live set).
    """

    imp: FloatArray
    eff: FloatArray  # current served latency of each member
    loc: np.ndarray  # batch item position of a movable member, else 0
    cand: np.ndarray  # movable member not yet chosen
    contrib: FloatArray
    batch_set: np.ndarray  # (S,): the set's index in the batch
    w: FloatArray
    base: FloatArray  # latency before the chain
    comp: np.ndarray
    full: FloatArray
    csum: FloatArray
    saved: FloatArray  # w * (base - current latency)
    ncand: np.ndarray
    group_units: np.ndarray  # units of the candidate members
    entry_row: np.ndarray
    entry_set: np.ndarray
    indptr: np.ndarray
    where: np.ndarray
    n_done: int = 0

    @classmethod
    def build(cls, x: _ChainInput) -> _LiveSets:
        lat, imp, loc_all = x.lat.copy(), x.imp.copy(), x.local
        cand = loc_all >= 0
        loc = np.maximum(loc_all, 0)
        w = x.weight.copy()
        top, contrib, full, csum = _set_terms(w, lat, imp, cand)
        flat = np.flatnonzero(cand.ravel())
        item = loc.ravel()[flat]
        entry_row, entry_set = np.divmod(flat[np.argsort(item, kind="stable")], len(w))
        ncand = _row_sum(cand.astype(np.int64))
        return cls(
            imp=imp,
            eff=lat,
            loc=loc,
            cand=cand,
            contrib=contrib,
            batch_set=np.arange(len(w)),
            w=w,
            base=top,
            comp=x.set_comp.copy(),
            full=full,
            csum=csum,
            saved=w * (top - top),
            ncand=ncand,
            group_units=_row_sum(np.where(cand, x.units[loc], 0)),
            entry_row=entry_row,
            entry_set=entry_set,
            indptr=np.concatenate([[0], np.cumsum(np.bincount(item, minlength=len(x.units)))]),
            where=np.arange(len(w)),
            n_done=int((ncand == 0).sum()),
        )

    def single_gains(self, n_items: int) -> FloatArray:
        """Gain of each batch item alone (summed in the same order as a masked bincount)."""
        return np.bincount(self.loc.ravel(), weights=self.contrib.ravel(), minlength=n_items)

    def choose(self, items: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Make ``items`` fast; recompute the terms of the sets containing them (returned)."""
        starts = self.indptr[items]
        lens = self.indptr[items + 1] - starts
        total = int(lens.sum())
        if not total:
            return np.zeros(0, dtype=np.intp)
        at = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        s = self.where[self.entry_set[at]]
        flat = self.entry_row[at] * len(self.w) + s
        self.eff.ravel()[flat] = self.imp.ravel()[flat]
        self.cand.ravel()[flat] = False
        s.sort()
        t = s[np.concatenate([[True], s[1:] != s[:-1]])]
        cand, w = _take(self.cand, t), self.w[t]
        top, contrib, full, csum = _set_terms(w, _take(self.eff, t), _take(self.imp, t), cand)
        _put(self.contrib, t, contrib)
        self.full[t], self.csum[t] = full, csum
        self.saved[t] = w * (self.base[t] - top)
        ncand = _row_sum(cand.astype(np.int64))
        self.ncand[t] = ncand
        self.group_units[t] = _row_sum(np.where(cand, units[_take(self.loc, t)], 0))
        self.n_done += int((ncand == 0).sum())
        return t

    def compact(self, n_comp: int) -> tuple[FloatArray, np.ndarray]:
        """Drop the sets without candidates: (their saving per component, new column of each)."""
        done = self.ncand == 0
        saving = np.bincount(self.comp[done], weights=self.saved[done], minlength=n_comp)
        keep = np.flatnonzero(~done)
        self.imp, self.eff = _take(self.imp, keep), _take(self.eff, keep)
        self.loc, self.cand = _take(self.loc, keep), _take(self.cand, keep)
        self.contrib = _take(self.contrib, keep)
        self.batch_set, self.w, self.base = self.batch_set[keep], self.w[keep], self.base[keep]
        self.comp, self.full, self.csum = self.comp[keep], self.full[keep], self.csum[keep]
        self.saved, self.ncand = self.saved[keep], self.ncand[keep]
        self.group_units = self.group_units[keep]
        self.where[self.batch_set] = np.arange(len(keep))
        self.n_done = 0
        return saving, np.cumsum(~done) - 1


_NEVER_FITS = np.iinfo(np.int64).max


@dataclass
class _GroupCandidates:
    """Live sets with at least two candidate members (a completion is a possible step).

    A group's gain is the sum of its candidates' single gains (which change every step) plus
    ``full - csum`` (which changes only when one of its members is chosen). Rows that stop being
    groups get ``units = _NEVER_FITS``; they and the rows of finished components are dropped
    once they are a quarter of all.
    """

    idx: np.ndarray  # live set column
    loc: np.ndarray  # (K, n): candidate's batch item position, else n_items (gain 0)
    full: FloatArray
    csum: FloatArray
    units: np.ndarray
    comp: np.ndarray
    pos: np.ndarray  # (live sets,): row of a live set here, else -1
    count: np.ndarray  # per component: rows that are not stale
    segments: _Segments
    n_stale: int = 0

    @classmethod
    def build(cls, live: _LiveSets, n_items: int, n_comp: int) -> _GroupCandidates:
        idx = np.flatnonzero(live.ncand >= 2)
        groups = cls(
            idx=idx,
            loc=np.where(_take(live.cand, idx), _take(live.loc, idx), n_items),
            full=live.full[idx],
            csum=live.csum[idx],
            units=live.group_units[idx],
            comp=live.comp[idx],
            pos=np.zeros(0, dtype=np.intp),
            count=np.bincount(live.comp[idx], minlength=n_comp),
            segments=_Segments(live.comp[idx], n_comp),
        )
        groups.reindex(len(live.w))
        return groups

    def reindex(self, n_live: int) -> None:
        self.pos = np.full(n_live, -1, dtype=np.intp)
        self.pos[self.idx] = np.arange(len(self.idx))

    def best(self, single_ext: FloatArray, room: np.ndarray) -> tuple[FloatArray, np.ndarray]:
        """Per component: the best gain per unit of a completion that fits, and its row."""
        gain = _row_sum(single_ext[self.loc]) + self.full - self.csum
        ok = (self.units <= room[self.comp]) & (gain > 0)
        ratio = np.where(ok, gain / np.maximum(self.units, _TINY), -np.inf)
        return self.segments.best(np.where(ok & (self.units == 0), np.inf, ratio))

    def update(self, live: _LiveSets, touched: np.ndarray, n_items: int) -> None:
        rows = self.pos[touched]
        mine = rows >= 0
        rows, sets = rows[mine], touched[mine]
        still = live.ncand[sets] >= 2
        r, s = rows[still], sets[still]
        _put(self.loc, r, np.where(_take(live.cand, s), _take(live.loc, s), n_items))
        self.full[r], self.csum[r], self.units[r] = live.full[s], live.csum[s], live.group_units[s]
        gone = rows[~still]
        self.units[gone] = _NEVER_FITS
        self.pos[sets[~still]] = -1
        np.subtract.at(self.count, self.comp[gone], 1)
        self.n_stale += len(gone)

    def drop_stale(self, active: np.ndarray, force: bool = False) -> None:
        """Drop stale rows and rows of finished components once a quarter are (or now)."""
        if not force and (self.n_stale + int(self.count[~active].sum())) * 4 <= len(self.idx):
            return
        keep = np.flatnonzero((self.units != _NEVER_FITS) & active[self.comp])
        self.idx, self.loc = self.idx[keep], _take(self.loc, keep)
        self.full, self.csum, self.units = self.full[keep], self.csum[keep], self.units[keep]
        self.comp = self.comp[keep]
        self.segments = _Segments(self.comp, len(self.count))
        self.pos[:] = -1
        self.pos[self.idx] = np.arange(len(self.idx))
        self.count[~active] = 0
        self.n_stale = 0

    def renumber(self, new_index: np.ndarray, n_live: int) -> None:
        """After the live sets were compacted (stale rows dropped first)."""
        self.idx = new_index[self.idx]
        self.reindex(n_live)


def _picks(
    live: _LiveSets,
    groups: _GroupCandidates,
    use_s: np.ndarray,
    at_s: np.ndarray,
    use_g: np.ndarray,
    at_g: np.ndarray,
) -> dict[int, list[int]]:
    """Per component taking a step: the batch items it adds (one item, or a set's candidates)."""
    picks: dict[int, list[int]] = {}
    for c, item in zip(np.flatnonzero(use_s).tolist(), at_s[use_s].tolist(), strict=True):
        picks[c] = [item]
    comps = np.flatnonzero(use_g)
    sets = groups.idx[at_g[comps]]
    members, cand = _take(live.loc, sets).T.tolist(), _take(live.cand, sets).T.tolist()
    for c, locs, ok in zip(comps.tolist(), members, cand, strict=True):
        picks[c] = sorted({i for i, k in zip(locs, ok, strict=True) if k})
    return picks


def _chains(x: _ChainInput, n_comp: int, cap_units: int) -> list[list[tuple[list[int], float]]]:
    """Greedy chains with set completion (module docstring), all components at once.

    Returns per component the steps (batch positions added, exact value after the step). Each
    step of every active component is taken together. Incremental: after a step only the sets
    containing a newly chosen item get new terms (``_LiveSets.choose``); the single gains are
    re-added from the stored terms and the groups' gains from those (``_GroupCandidates``).
    """
    units, item_comp = x.units, x.item_comp
    n_items = len(units)
    live = _LiveSets.build(x)
    groups = _GroupCandidates.build(live, n_items, n_comp)
    item_segments = _Segments(item_comp, n_comp)
    chosen = np.zeros(n_items, dtype=bool)
    resolved = np.zeros(n_comp)
    room = np.full(n_comp, cap_units, dtype=np.int64)
    active = np.ones(n_comp, dtype=bool)
    single_ext = np.zeros(n_items + 1)  # the last entry: gain 0 for a group's non-candidate
    steps: list[list[tuple[list[int], float]]] = [[] for _ in range(n_comp)]
    while active.any():
        single = live.single_gains(n_items)
        single_ext[:n_items] = single
        ok_s = ~chosen & (units <= room[item_comp]) & (single > 0) & active[item_comp]
        r_s = np.where(ok_s, single / np.maximum(units, _TINY), -np.inf)
        r_s = np.where(ok_s & (units == 0), np.inf, r_s)
        best_s, at_s = item_segments.best(r_s)
        best_g, at_g = groups.best(single_ext, room)
        use_g = active & (best_g > best_s)
        use_s = active & ~use_g & (best_s > -np.inf)
        active &= use_g | use_s
        if not active.any():
            break
        picks = _picks(live, groups, use_s, at_s, use_g, at_g)
        new = np.array([i for items in picks.values() for i in items], dtype=np.intp)
        chosen[new] = True
        np.subtract.at(room, item_comp[new], units[new])
        groups.update(live, live.choose(new, units), n_items)
        if live.n_done * 4 > len(live.w):
            groups.drop_stale(active, force=True)
            saving, new_index = live.compact(n_comp)
            resolved += saving
            groups.renumber(new_index, len(live.w))
        else:
            groups.drop_stale(active)
        value = (resolved + np.bincount(live.comp, weights=live.saved, minlength=n_comp)).tolist()
        for c, items in picks.items():
            steps[c].append((items, value[c]))
    return steps


@dataclass
class _Group:
    """One component's candidates: candidate i is ``items[:ends[i]]`` (a chain's prefix, or a
    single item) or, for an enumerated component, ``items[bits[i]]``."""

    items: np.ndarray  # global item ids (a chain: in the order the chain adds them)
    ends: np.ndarray | None = None
    bits: np.ndarray | None = None

    def subset(self, option: int) -> np.ndarray:
        if self.bits is not None:
            return self.items[self.bits[option]]
        assert self.ends is not None
        return self.items[: int(self.ends[option])]


def _single_curves(
    sets: _Sets, first: np.ndarray, singles: np.ndarray, units: np.ndarray, cap_units: int
) -> tuple[list[Curve], list[_Group]]:
    """Components of one item (all of them when K = 1): gains in one vectorised pass."""
    is_single = np.zeros(len(units), dtype=bool)
    is_single[singles] = True
    comp_sets = np.flatnonzero(is_single[sets.members[first, np.arange(len(first))]])
    w = sets.weight[comp_sets]
    gain = w * (_row_max(_take(sets.lat, comp_sets)) - _row_max(_take(sets.imp, comp_sets)))
    item = sets.members[first[comp_sets], comp_sets]
    value = np.bincount(item, weights=gain, minlength=len(units))
    curves: list[Curve] = []
    groups: list[_Group] = []
    both = np.array([0, 1])
    for n in singles.tolist():
        curves.append(pareto(np.array([0, units[n]]), np.array([0.0, value[n]]), both, cap_units))
        groups.append(_Group(np.array([n]), ends=both))
    return curves, groups


def _chain_curves(
    sets: _Sets,
    large: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    units: np.ndarray,
    cap_units: int,
) -> tuple[list[Curve], list[_Group]]:
    """Curves of the large components (items, set columns, local positions), batched."""
    offsets = np.cumsum([0] + [len(items) for items, _, _ in large])
    all_items = np.concatenate([items for items, _, _ in large])
    all_sets = np.concatenate([cols for _, cols, _ in large])
    batch = _ChainInput(
        item_comp=np.repeat(np.arange(len(large)), [len(i) for i, _, _ in large]),
        units=units[all_items],
        set_comp=np.repeat(np.arange(len(large)), [len(c) for _, c, _ in large]),
        weight=sets.weight[all_sets],
        local=np.concatenate(
            [np.where(lo >= 0, lo + offsets[c], -1) for c, (_, _, lo) in enumerate(large)], axis=1
        ),
        lat=_take(sets.lat, all_sets),
        imp=_take(sets.imp, all_sets),
    )
    curves: list[Curve] = []
    groups: list[_Group] = []
    for steps in _chains(batch, len(large), cap_units):
        added = [i for step_items, _ in steps for i in step_items]
        chain = all_items[np.array(added, dtype=np.intp)]
        ends = np.cumsum([0] + [len(step_items) for step_items, _ in steps])
        sizes = np.concatenate([[0], np.cumsum(units[chain])])[ends]
        values = np.array([0.0] + [value for _, value in steps])
        curves.append(pareto(sizes, values, np.arange(len(values)), cap_units))
        groups.append(_Group(chain, ends=ends))
    return curves, groups


def _multi_item_components(
    sets: _Sets, label: np.ndarray, involved: np.ndarray, first: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per component of two items or more: (its items ascending, its set columns, the local
    position of each movable member in ``items``, else -1)."""
    comp_of_set = label[sets.members[first, np.arange(len(first))]]
    comps, size = np.unique(label[involved], return_counts=True)
    set_order = np.argsort(comp_of_set, kind="stable")
    set_bounds = np.searchsorted(comp_of_set[set_order], np.stack([comps, comps + 1]))
    item_order = np.argsort(label[involved], kind="stable")
    item_bounds = np.searchsorted(label[involved][item_order], np.stack([comps, comps + 1]))
    local_of = -np.ones(len(label), dtype=np.intp)
    for c in np.flatnonzero(size > 1).tolist():
        cols = set_order[set_bounds[0, c] : set_bounds[1, c]]
        items = involved[item_order[item_bounds[0, c] : item_bounds[1, c]]]
        local_of[items] = np.arange(len(items))
        members = _take(sets.members, cols)
        local = np.where(_take(sets.movable, cols), local_of[np.maximum(members, 0)], -1)
        local_of[items] = -1
        yield items, cols, local


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
    involved = np.unique(sets.members.ravel()[np.flatnonzero(sets.movable.ravel())])
    first = _first_movable(sets.movable)
    size_of = np.bincount(label[involved], minlength=int(label.max()) + 1)
    singles = involved[size_of[label[involved]] == 1]
    curves, groups = (
        _single_curves(sets, first, singles, units, cap_units) if len(singles) else ([], [])
    )
    large: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (items, set columns, local)
    for items, cols, local in _multi_item_components(sets, label, involved, first):
        k = len(items)
        if k <= exact_limit and (2**k) * local.size <= MAX_ENUM_CELLS:
            w, lat, imp = sets.weight[cols], _take(sets.lat, cols), _take(sets.imp, cols)
            bits, value = _enumerate(k, local, w, lat, imp)
            curves.append(pareto(bits @ units[items], value, np.arange(len(value)), cap_units))
            groups.append(_Group(items, bits=bits))
        else:
            large.append((items, cols, local))
    if large:
        chain_curves, chain_groups = _chain_curves(sets, large, units, cap_units)
        curves += chain_curves
        groups += chain_groups
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
        parts = [g.subset(int(c.option[p])) for c, g, p in zip(curves, groups, picks, strict=True)]
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
        gains = _ItemGains(_server_sets(ci, served, m, no_units, 0), ci.n_items)
        room = float(ci.capacity[m] - ci.capacity_used(placement[m : m + 1])[0])
        slack = CAPACITY_RTOL * max(float(ci.capacity[m]), 1.0)
        while len(gains.sets.weight):
            fits = (~placement[m]) & (ci.size <= room + slack)
            gain = np.where(fits, gains.single(), 0.0)
            if not (gain > 0).any():
                break
            ratio = np.where(ci.size > 0, gain / np.maximum(ci.size, _TINY), np.inf)
            n = int(np.argmax(np.where(gain > 0, ratio, -np.inf)))
            placement[m, n] = True
            room -= float(ci.size[n])
            served[:, n] = np.minimum(served[:, n], ci.latency[:, m])
            gains.choose(n)


class _ItemGains:
    """Exact gain of caching each single item on one server (others unchanged), kept up to
    date as items are cached: only the sets containing the cached item are recomputed."""

    def __init__(self, sets: _Sets, n_items: int) -> None:
        self.sets = sets
        self.n_items = n_items
        _, self.contrib, _, _ = _set_terms(sets.weight, sets.lat, sets.imp, sets.movable)
        # bincount keys in (set, member) order: the order of a masked bincount over (S, K)
        self.keys = np.where(sets.members >= 0, sets.members, n_items).T.ravel()

    def single(self) -> FloatArray:
        weights = self.contrib.T.ravel()
        return np.bincount(self.keys, weights=weights, minlength=self.n_items + 1)[: self.n_items]

    def choose(self, item: int) -> None:
        sets = self.sets
        hit = sets.movable & (sets.members == item)
        t = np.flatnonzero(_row_max(hit))
        imp, now = _take(sets.imp, t), _take(hit, t)
        lat = np.where(now, imp, _take(sets.lat, t))
        movable = _take(sets.movable, t) & ~now
        _put(sets.lat, t, lat)
        _put(sets.movable, t, movable)
        _put(self.contrib, t, _set_terms(sets.weight[t], lat, imp, movable)[1])


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
