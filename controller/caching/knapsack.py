"""The knapsack over groups of one server's subproblem: plain DP and (max,+) convolution.

Each group g (a connected set of co-activated experts of one layer, see ``decomposition``) comes
with a value curve: candidate subsets with an integer size (capacity units) and a value (the
latency they save). The subproblem picks one candidate per group (the empty one included) so that
the sizes add up to at most the capacity C and the values add up to the most. Its optimum over the
given curves is

    D(C) = max { sum_g v_g(k_g) : sum_g k_g <= C },   v_g(k) = best value of group g within k units.

``solve_dense`` is the textbook dynamic programme over groups and capacity:
dp_g(c) = max_{0 <= k <= min(c, K_g)} dp_{g-1}(c - k) + v_g(k), with v_g expanded to a dense array
over k = 0..K_g (K_g: the group's largest useful size). It is exact over the curves and takes
O(sum_g C K_g) time: pseudo-polynomial, it grows with the number of capacity units.

``solve_maxconv`` computes the same maximum as a tree of (max,+) convolutions of *step functions*
(a curve only changes at its candidates' sizes, and so does the convolution of two of them), with
value sparsification: after every convolution a step function keeps, in each value bucket
[(1 + eps_l)^i, (1 + eps_l)^{i+1}), only its smallest-size point. A dropped point is then worth
less than (1 + eps_l) times a kept point of no larger size. With d = ceil(log2 G) + 1 rounds of
sparsification (leaves, then each tree level) and (1 + eps_l)^d = 1 / (1 - eps):

    value(solve_maxconv) >= (1 - eps) D(C)      (proof: by induction over the tree, the
    sparsified function f~ of a node satisfies f~(c) >= f(c) / (1 + eps_l)^j after j rounds, and
    (max,+) convolution preserves such lower bounds)

and every kept point is a real combination of candidates (its value is exact, not rounded). A
convolution forms every pair of points within C, groups the pairs by size with one stable sort of
the sizes (they come as sorted runs, one per left point) and keeps per size the best value if it
beats every smaller size: O(p_left p_right log p_left) per node, with
p <= min(C + 1, log_{1+eps_l}(R) + 2) points per function (R: largest over smallest positive
value). It does not grow with the number of capacity units beyond the number of distinct sizes,
which is what makes it fast on fine grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DEFAULT_EPSILON = 0.01
# Pairs of points combined at once in one convolution (memory bound).
CHUNK_PAIRS = 2_000_000


@dataclass(frozen=True)
class Curve:
    """Candidates of one group as a step function: sizes strictly increasing from 0, values too.

    ``option[i]`` is the caller's index of the candidate behind point i.
    """

    units: IntArray
    value: FloatArray
    option: IntArray


def pareto(units: IntArray, value: FloatArray, option: IntArray, capacity: int) -> Curve:
    """The step function of candidates: within ``capacity``, each point strictly better.

    The caller includes the empty candidate (0 units, value 0), so the curve starts at 0 units.
    """
    keep = units <= capacity
    units, value, option = units[keep], value[keep], option[keep]
    order = np.lexsort((-value, units))
    units, value, option = units[order], value[order], option[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(value)[:-1]])
    strict = value > best_before
    return Curve(units[strict], value[strict], option[strict])


def solve_dense(curves: list[Curve], capacity: int) -> tuple[float, list[int]]:
    """The plain DP (module docstring); returns (value, the chosen point index of each curve)."""
    c_max = max(int(capacity), 0)
    dp = np.zeros(c_max + 1)
    choice = np.zeros((len(curves), c_max + 1), dtype=np.int32)
    for g, curve in enumerate(curves):
        k_max = min(c_max, int(curve.units[-1]))
        # dense step function v(k), k = 0..k_max
        dense = curve.value[np.searchsorted(curve.units, np.arange(k_max + 1), side="right") - 1]
        new = dp + dense[0]
        arg = np.zeros(c_max + 1, dtype=np.int32)
        for k in range(1, k_max + 1):
            cand = dp[: c_max + 1 - k] + dense[k]
            tail = new[k:]
            better = cand > tail
            tail[better] = cand[better]
            arg[k:][better] = k
        dp = new
        choice[g] = arg
    picks = [0] * len(curves)
    c = c_max
    for g in range(len(curves) - 1, -1, -1):
        k = int(choice[g, c])
        picks[g] = int(np.searchsorted(curves[g].units, k, side="right") - 1)
        c -= k
    return float(dp[c_max]), picks


@dataclass
class _Node:
    units: IntArray
    value: FloatArray
    left: IntArray  # point of the left child (or of the leaf curve)
    right: IntArray  # point of the right child (-1 for a leaf)
    children: tuple[_Node, _Node] | None
    leaf: int  # curve index of a leaf, else -1


def _sparsify(
    units: IntArray, value: FloatArray, left: IntArray, right: IntArray, eps_l: float
) -> tuple[IntArray, FloatArray, IntArray, IntArray]:
    """Keep the first (smallest-size) point of each value bucket (points are Pareto-sorted)."""
    if eps_l <= 0 or len(value) <= 2:
        return units, value, left, right
    positive = value > 0
    bucket = np.full(len(value), -(2**62), dtype=np.int64)
    bucket[positive] = np.floor(np.log(value[positive]) / math.log1p(eps_l)).astype(np.int64)
    first = np.concatenate([[True], bucket[1:] != bucket[:-1]])
    return units[first], value[first], left[first], right[first]


def _frontier(units: IntArray, value: FloatArray) -> IntArray:
    """Indices of the step function's points among (size, value) pairs.

    Per size the best value (the first pair among equal ones), kept when strictly better than
    every smaller size; ascending sizes. Pairs are grouped by size with one stable sort of the
    sizes (a convolution's pairs come in sorted runs, one per left point), then a max per group.
    """
    if not len(units):
        return np.zeros(0, dtype=np.intp)
    order = np.argsort(units, kind="stable")
    size, val = units[order], value[order]
    new_size = np.concatenate([[True], size[1:] != size[:-1]])
    group = np.cumsum(new_size) - 1
    best = np.maximum.reduceat(val, np.flatnonzero(new_size))
    hit = np.flatnonzero(val == best[group])
    first = hit[np.concatenate([[True], group[hit][1:] != group[hit][:-1]])]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(best)[:-1]])
    return order[first[best > best_before]]


def _pairs(a: _Node, b: _Node, capacity: int) -> tuple[IntArray, FloatArray, IntArray]:
    """Every pair of points of a and b within the capacity: (size, value, i * len(b) + j)."""
    parts_u, parts_v, parts_k = [], [], []
    rows = max(1, CHUNK_PAIRS // max(1, len(b.units)))
    for start in range(0, len(a.units), rows):
        u = (a.units[start : start + rows, None] + b.units[None, :]).ravel()
        v = (a.value[start : start + rows, None] + b.value[None, :]).ravel()
        k = np.flatnonzero(u <= capacity)
        parts_u.append(u[k])
        parts_v.append(v[k])
        parts_k.append(k + start * len(b.units))
    if len(parts_u) == 1:
        return parts_u[0], parts_v[0], parts_k[0]
    return np.concatenate(parts_u), np.concatenate(parts_v), np.concatenate(parts_k)


def _convolve(a: _Node, b: _Node, capacity: int, eps_l: float) -> _Node:
    units, value, pair = _pairs(a, b, capacity)
    keep = _frontier(units, value)
    li, rj = np.divmod(pair[keep], len(b.units))
    units, value, li, rj = _sparsify(units[keep], value[keep], li, rj, eps_l)
    return _Node(units, value, li, rj, (a, b), -1)


def level_epsilon(n_curves: int, epsilon: float) -> float:
    """eps_l with (1 + eps_l)^d = 1 / (1 - eps), d = ceil(log2 n) + 1 sparsification rounds."""
    if epsilon <= 0:
        return 0.0
    rounds = math.ceil(math.log2(max(n_curves, 1))) + 1
    return (1.0 / (1.0 - epsilon)) ** (1.0 / rounds) - 1.0


def solve_maxconv(
    curves: list[Curve], capacity: int, epsilon: float = DEFAULT_EPSILON
) -> tuple[float, list[int]]:
    """The (max,+) convolution tree (module docstring): value >= (1 - epsilon) x the plain DP's."""
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if not curves:
        return 0.0, []
    c_max = max(int(capacity), 0)
    eps_l = level_epsilon(len(curves), epsilon)
    level: list[_Node] = []
    for g, curve in enumerate(curves):
        idx = np.arange(len(curve.units))
        u, v, li, rj = _sparsify(curve.units, curve.value, idx, -np.ones_like(idx), eps_l)
        level.append(_Node(u, v, li, rj, None, g))
    while len(level) > 1:
        nxt = [_convolve(level[i], level[i + 1], c_max, eps_l) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    root = level[0]
    picks = [0] * len(curves)
    stack = [(root, len(root.units) - 1)]
    while stack:
        node, point = stack.pop()
        if node.children is None:
            picks[node.leaf] = int(node.left[point])
            continue
        stack.append((node.children[0], int(node.left[point])))
        stack.append((node.children[1], int(node.right[point])))
    return float(root.value[-1]), picks
