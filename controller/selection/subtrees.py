"""Every set of a few small subtrees of the branch and bound, scored in one call.

A node of the search has forced set F and candidates U (in search order); a child adds one
candidate u and keeps those after it that still fit. When a child's subtree is small, the search
scores every set F ∪ {u} ∪ V of it (V ⊆ its candidates, non-empty, within the energy budget)
instead of bounding and expanding it. Each set's per-sample sums Σ w q and Σ w are its parent's
(the set without its last expert) plus one expert's, and its loss

    L = −mean_s log max(MIN_PROB, num_s / den_s).

Two kernels do it and return the same sets, losses equal up to rounding (relative 1e−14: the
search rescores with ``Evaluator.loss`` every set within ``RECHECK_TOL`` of the best before it
counts) and the same counts:

* **numpy**, a block of sets of one size at a time: no start-up cost, a few ns per set and
  sample. A process starts with it: ``moe2 select`` on a small instance, or a controller whose
  fleet has a few experts, never waits for a compiler.
* **compiled** (``subtrees_compiled.py``, numba), depth first: several times faster per set, but
  numba's import and its kernels cost about a second to load (several seconds to compile on a
  machine that has not cached them). It is loaded in a background thread once a process has
  scored ``NUMPY_WORK`` set-samples in numpy, or at a call larger than ``NUMPY_CALL``, or when
  asked to (``warm_up``: a large fleet's controller); numpy scores until it is loaded, so no
  search, time-limited or not, waits for it.

Only stable instances (every sample's logits within 600 of each other) come here: their weights
exp(w − max w) are positive, so every sum of weights is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np

from controller.selection.loss import MIN_PROB, BoolArray, FloatArray, IntArray

# Room for this many sets near the best per compiled call; when more tie, the call is made again
# with room for every set it scored.
_OUT_ROWS = 1024
# numpy scores the children of sets of this many set-samples (times the candidates) at once.
NUMPY_BLOCK = 1_000_000
# After this many set-samples scored in numpy (about half a second's work), or at a call larger
# than NUMPY_CALL, the compiled kernel is loaded in the background; numpy scores until it is.
NUMPY_WORK = 100_000_000
NUMPY_CALL = 4_000_000

Kernel = Literal["auto", "numpy", "compiled"]


class SubtreeScores(NamedTuple):
    scored: int  # sets scored
    violations: int  # sets whose loss exceeds their parent's (the set without its last expert)
    # Sets whose loss came within the threshold of the lowest loss seen (the threshold only
    # falls): row i lists sizes[i] positions in the node's candidates, in search order.
    sets: IntArray
    sizes: IntArray
    losses: FloatArray


class _Compiled:
    """The compiled walk, once loaded, and the numpy work done before it was."""

    def __init__(self) -> None:
        self.walk: Callable[..., tuple[int, int, int, bool]] | None = None
        self.numpy_work = 0
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None

    def load(self) -> Callable[..., tuple[int, int, int, bool]]:
        """The compiled walk, imported (compiled where numba has no cache of it) here if no
        thread has done it yet; a second caller waits for the first."""
        if self.walk is None:
            from controller.selection.subtrees_compiled import walk

            self.walk = walk
        return self.walk

    def load_in_background(self) -> None:
        """Start loading the compiled walk in a thread of its own, once per process."""
        with self._lock:
            if self._loader is not None or self.walk is not None:
                return
            self._loader = threading.Thread(target=self.load, name="subtrees-compile", daemon=True)
        self._loader.start()

    def counted(self, work: int) -> None:
        with self._lock:
            self.numpy_work += work
            due = self.numpy_work > NUMPY_WORK
        if due:
            self.load_in_background()


COMPILED = _Compiled()


def warm_up() -> None:
    """Load the compiled kernel in the background now (for a search that will need it: a large
    fleet's controller), so that no time-limited search waits for it."""
    COMPILED.load_in_background()


def score_subtrees(
    child_num: FloatArray,
    child_den: FloatArray,
    x: FloatArray,
    w: FloatArray,
    energy: FloatArray,
    rest: BoolArray,
    child_pos: IntArray,
    child_energy: FloatArray,
    child_loss: FloatArray,
    *,
    limit_j: float,
    floor: bool,
    threshold: float,
    recheck: float,
    tie_tol: float,
    kernel: Kernel = "auto",
) -> SubtreeScores:
    """Score every set of the subtrees of some children of one node.

    A node has candidates c = 0..C−1 (``x``, ``w`` [C, samples]: their weighted gold
    probabilities and weights; ``energy`` [C]). For each of g children: its per-sample sums
    (``child_num``, ``child_den`` [g, samples], those of F ∪ {u}), its position ``child_pos``
    among the candidates, its energy and loss, and its candidates ``rest`` [g, C]. Every set
    F ∪ {u} ∪ V, V a non-empty subset of the child's candidates whose energy (summed in search
    order onto the child's) stays within ``limit_j``, is scored. Sets whose loss is at most
    ``threshold``, then at most the lowest loss seen plus ``recheck`` (in depth-first order), are
    returned; a set whose loss exceeds its parent's (the set without its last expert) by more
    than ``tie_tol`` counts as a monotonicity violation. ``kernel``: see the module's docstring.
    """
    args = (
        np.ascontiguousarray(child_num, dtype=np.float64),
        np.ascontiguousarray(child_den, dtype=np.float64),
        np.ascontiguousarray(x, dtype=np.float64),
        np.ascontiguousarray(w, dtype=np.float64),
        np.ascontiguousarray(energy, dtype=np.float64),
        np.ascontiguousarray(rest, dtype=np.bool_),
        np.ascontiguousarray(child_pos, dtype=np.int64),
        np.ascontiguousarray(child_energy, dtype=np.float64),
        np.ascontiguousarray(child_loss, dtype=np.float64),
        float(limit_j),
        bool(floor),
        float(threshold),
        float(recheck),
        float(tie_tol),
    )
    if kernel == "compiled" or (kernel == "auto" and COMPILED.walk is not None):
        return _score_compiled(COMPILED.load(), args)
    if kernel == "auto" and _most_sets(args[5]) * args[2].shape[1] > NUMPY_CALL:
        COMPILED.load_in_background()
    scores = _score_numpy(*args)
    if kernel == "auto":
        COMPILED.counted(scores.scored * args[2].shape[1])
    return scores


def _most_sets(rest: BoolArray) -> int:
    """Every non-empty subset of each child's candidates: at least the sets that fit."""
    return sum(2 ** min(int(n), 62) - 1 for n in rest.sum(axis=1))


def _score_compiled(walk: Callable[..., tuple[int, int, int, bool]], args: Any) -> SubtreeScores:
    rest = args[5]
    rows = _OUT_ROWS
    while True:
        out_sets = np.empty((rows, rest.shape[1] + 1), dtype=np.int64)
        out_sizes = np.empty(rows, dtype=np.int64)
        out_losses = np.empty(rows)
        scored, violations, n_out, complete = walk(*args, out_sets, out_sizes, out_losses)
        if complete:  # else more sets tied near the best than the buffer held: again, larger
            break
        rows = scored + 1
    return SubtreeScores(
        int(scored),
        int(violations),
        out_sets[:n_out],
        out_sizes[:n_out],
        out_losses[:n_out],
    )


class _Level(NamedTuple):
    """The sets of one size in one child's subtree: their members (positions among the node's
    candidates, the child's first), sums, losses, energies, and each one's next candidate."""

    paths: IntArray
    num: FloatArray
    den: FloatArray
    loss: FloatArray
    energy: FloatArray
    next: IntArray


def _losses(num: FloatArray, den: FloatArray, floor: bool) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
        if floor:
            ratio = np.maximum(ratio, MIN_PROB)
        return -np.log(ratio).mean(axis=1)


def _grow(
    level: _Level, pos: IntArray, x: FloatArray, w: FloatArray, energy: FloatArray, limit_j: float
) -> tuple[_Level, IntArray] | None:
    """The sets one larger: each set with one of its later candidates whose energy (added to
    the set's, as the compiled walk adds it) fits, with the row of its parent; None if none."""
    sums = level.energy[:, None] + energy[pos][None, :]
    later = np.arange(len(pos))[None, :] >= level.next[:, None]
    parent, i = np.nonzero(later & (sums <= limit_j))
    if not len(parent):
        return None
    v = pos[i]
    num = level.num[parent] + x[v]
    den = level.den[parent] + w[v]
    paths = np.concatenate([level.paths[parent], v[:, None]], axis=1)
    return _Level(paths, num, den, np.empty(0), sums[parent, i], i + 1), parent


def _score_numpy(
    child_num: FloatArray,
    child_den: FloatArray,
    x: FloatArray,
    w: FloatArray,
    energy: FloatArray,
    rest: BoolArray,
    child_pos: IntArray,
    child_energy: FloatArray,
    child_loss: FloatArray,
    limit_j: float,
    floor: bool,
    threshold: float,
    recheck: float,
    tie_tol: float,
) -> SubtreeScores:
    """The numpy kernel: the sets of each child's subtree a block of one size at a time (the
    children of at most ``NUMPY_BLOCK`` set-samples at once); then, of those within
    ``threshold``, the ones the depth-first walk would keep (its threshold only falls)."""
    width = rest.shape[1] + 1
    rows_cap = max(1, NUMPY_BLOCK // max(1, x.shape[1] * rest.shape[1]))
    found: list[tuple[int, IntArray, FloatArray]] = []  # (child, padded members, losses)
    scored = violations = 0
    for g in range(rest.shape[0]):
        pos = np.flatnonzero(rest[g])
        root = _Level(
            np.array([[child_pos[g]]], dtype=np.int64),
            child_num[g][None, :],
            child_den[g][None, :],
            child_loss[g : g + 1],
            child_energy[g : g + 1],
            np.zeros(1, dtype=np.int64),
        )
        stack = [(root, 0)]  # sets whose children are not all scored yet, from that row on
        while stack:
            level, start = stack.pop()
            if start >= len(level.next):
                continue
            stack.append((level, start + rows_cap))
            block = _Level(*(part[start : start + rows_cap] for part in level))
            grown = _grow(block, pos, x, w, energy, limit_j)
            if grown is None:
                continue
            bigger, parent = grown
            loss = _losses(bigger.num, bigger.den, floor)
            scored += len(loss)
            violations += int(np.count_nonzero(loss > block.loss[parent] + tie_tol))
            stack.append((bigger._replace(loss=loss), 0))
            near = loss <= threshold  # no other set can be kept, nor lower the threshold
            if near.any():
                padded = np.full((int(near.sum()), width), -1, dtype=np.int64)
                padded[:, : bigger.paths.shape[1]] = bigger.paths[near]
                found.append((g, padded, loss[near]))
    return _kept(found, width, threshold, recheck, scored, violations)


def _kept(
    found: list[tuple[int, IntArray, FloatArray]],
    width: int,
    threshold: float,
    recheck: float,
    scored: int,
    violations: int,
) -> SubtreeScores:
    """The sets the depth-first walk keeps: in its order (by child, then members, a set before
    those that extend it), each within ``threshold`` and within ``recheck`` of the lowest loss
    before it."""
    if not found:
        empty = np.empty((0, width), dtype=np.int64)
        return SubtreeScores(scored, violations, empty, np.empty(0, dtype=np.int64), np.empty(0))
    groups = np.concatenate([np.full(len(loss), g) for g, _, loss in found])
    paths = np.concatenate([p for _, p, _ in found])
    losses = np.concatenate([loss for _, _, loss in found])
    order = np.lexsort((*paths.T[::-1], groups))
    paths, losses = paths[order], losses[order]
    lowest_before = np.minimum.accumulate(np.concatenate([[np.inf], losses[:-1]]))
    keep = losses <= np.minimum(threshold, lowest_before + recheck)
    sizes = (paths >= 0).sum(axis=1).astype(np.int64)
    return SubtreeScores(scored, violations, paths[keep], sizes[keep], losses[keep])
