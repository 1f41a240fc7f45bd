"""The anytime branch and bound behind ``moe2`` (no top_k): exact when it finishes, a proven gap
when its time runs out.

The search is a depth-first walk of the Boolean lattice (experts in decreasing energy, then
single-expert loss; a node's children add one later candidate each), with four changes:

* **a good incumbent first**: greedy by loss gain per joule, then local search (add, drop and swap
  one expert) until no move improves the loss, so that the first answer is already good;
* **children in one batch**: the losses of every child F ∪ {u} of a node and the lower bound of
  every child's subtree are computed with a few numpy operations on [children, samples,
  candidates] arrays, instead of one call per child;
* **small subtrees scored whole**: a child whose subtree can hold at most ``LEAF_SETS`` sets
  (subsets of its candidates no larger than the most of them that fit the energy left) is not
  expanded; every set of it that fits is scored, without bounds, by a compiled depth-first walk
  with incremental sums (``subtrees.py``; the subtrees of consecutive such children of a node
  share one call of up to ``GROUP_SETS`` sets);
* **a set-level bound** beside the prefix bound of ``Evaluator.bound_from_sums`` (``_modular``:
  one V for every sample, a modular lower bound and its energy knapsack), computed only for the
  children that the per-sample bound keeps. Two more bounds are here, off by default because they
  did not pay for their cost (``docs/selection.md``): a tangent bound (``_tangent``) and
* **an energy-aware per-sample bound**: per sample,
  with a = Σ_F w q, b = Σ_F w (F non-empty), candidates U whose gold probabilities are at most Q,
  and X an upper bound on Σ_V w q over every V ⊆ U that fits the energy left (the fractional
  knapsack of w q by energy, the first item that does not fit counted whole),

      m_{F∪V} = (a + Σ_V w q) / (b + Σ_V w) ≤ (a + Σ_V w q) / (b + Σ_V w q / Q)
              ≤ (a + X) / (b + X / Q)            when Q > a / b (the map grows with Σ_V w q),
      m_{F∪V} ≤ a / b                            otherwise (every candidate lowers the average).

  The per-sample bound is the smaller of the two; -log of it, averaged, bounds every set of the
  subtree, so pruning on it keeps the search exact (``docs/selection.md``).

The walk is a generator that yields once per node (never inside a subtree scored whole), so a caller
can stop it at a deadline and resume it later (``BranchAndBound.run``). While it is stopped,
every set not yet evaluated lies in the subtree of a child that some frame on the stack has not
started, and each such child's bound was computed with its batch: the smallest of them (and the
incumbent's loss) is a proven lower bound on the optimum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from controller.selection.loss import (
    BUDGET_RTOL,
    MIN_PROB,
    BoolArray,
    Evaluator,
    FloatArray,
    IntArray,
)
from controller.selection.subtrees import score_subtrees

# Losses this close are a tie (then fewer experts, lower energy, lower indices win).
TIE_TOL = 1e-12
# A node is pruned only when its bound exceeds the incumbent by more than this: rounding in the
# bound can never cut off a set that ties with or beats the incumbent.
PRUNE_MARGIN = 1e-9
# Batch losses (sums in search order) within this of the best are recomputed with
# ``Evaluator.loss`` on the sorted set before they enter the tie pool, so ties resolve exactly as
# with one evaluation per set.
RECHECK_TOL = 1e-9
# At most this many elements per [children, samples, candidates] array: larger batches are split,
# and the walk can stop between the parts.
BATCH_ELEMENTS = 200_000
# A child whose subtree holds at most this many sets (counted by size: as many of its
# candidates as the cheapest ones that fit the energy left) has them all scored in compiled code
# (``subtrees.py``), with no bound of its own, instead of being bounded and expanded node by node
# (scoring 65535 sets of 250 samples takes about 10 ms there: the walk can stop between calls).
LEAF_SETS = 65535
# Consecutive children scored that way share one call while it holds at most this many sets
# (counted as for LEAF_SETS): most such subtrees are small.
GROUP_SETS = 65535
# Matrix products are split into row blocks of at most this many multiply-adds: OpenBLAS runs
# a product at or below 65536 x 4 of them on one thread, and above it on every core, which on a
# shared 2-core machine made the same search take 1x to 4x its time from run to run.
PRODUCT_BLOCK = 200_000
# Local search stops after this many improving moves (each move is one batch of neighbours).
MAX_LOCAL_MOVES = 200


def tie_key(ev: Evaluator, idx: tuple[int, ...]) -> tuple[int, float, tuple[int, ...]]:
    return (len(idx), ev.energy_j(np.asarray(idx, dtype=np.intp)), idx)


@dataclass
class Tracker:
    """Counts evaluations and keeps every set within TIE_TOL of the best loss seen."""

    ev: Evaluator
    evaluated: int = 0
    violations: int = 0
    best: float = math.inf
    pool: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)

    def evaluate(self, idx: Sequence[int], parent_loss: float | None = None) -> float:
        loss = self.ev.loss(np.asarray(idx, dtype=np.intp))
        self.evaluated += 1
        if parent_loss is not None and loss > parent_loss + TIE_TOL:
            self.violations += 1
        self.consider(tuple(idx), loss)
        return loss

    def consider(self, idx: tuple[int, ...], loss: float) -> None:
        if loss > self.best + TIE_TOL:
            return
        if loss < self.best:
            self.best = loss
            self.pool = [(x, s) for x, s in self.pool if x <= loss + TIE_TOL]
        self.pool.append((loss, idx))

    def consider_batch(self, losses: FloatArray, sets: Sequence[Sequence[int]]) -> None:
        """Offer sets scored in a batch; those near the best are rescored exactly first."""
        for j in np.flatnonzero(losses <= self.best + RECHECK_TOL):
            chosen = tuple(sorted(int(n) for n in sets[int(j)]))
            self.consider(chosen, self.ev.loss(np.asarray(chosen, dtype=np.intp)))

    def winner(self) -> tuple[int, ...] | None:
        tied = [s for x, s in self.pool if x <= self.best + TIE_TOL]
        return min(tied, key=lambda s: tie_key(self.ev, s), default=None)


def batch_losses(
    ev: Evaluator, num: FloatArray, den: FloatArray, sets: Sequence[Sequence[int]]
) -> FloatArray:
    """L of each set from its per-sample sums [sets, samples] (exact per set if unstable)."""
    if not ev.stable:
        return np.array([ev.loss(sorted(s)) for s in sets], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.log(np.maximum(MIN_PROB, num / den)).mean(axis=1)


def _energy_limit(ev: Evaluator) -> float:
    return float(ev.energy_budget * (1 + BUDGET_RTOL) + 1e-12)


# ---- the incumbent ----------------------------------------------------------------------------


class LocalSearch:
    """Greedy by loss gain per joule, then add / drop / swap moves while one lowers the loss.

    Every set it scores is feasible (delays: only experts that fit alone are used; energy: the
    summed energy is within the budget). ``seen`` holds the bitmasks of the sets it scored, so the
    branch and bound does not count them twice.
    """

    def __init__(self, ev: Evaluator, tracker: Tracker, singles: list[int]) -> None:
        self.ev = ev
        self.tracker = tracker
        self.singles = np.asarray(singles, dtype=np.intp)
        self.seen: set[int] = set()
        self.limit_j = _energy_limit(ev)

    def _score(self, sets: list[tuple[int, ...]]) -> FloatArray:
        ev = self.ev
        if not sets:
            return np.zeros(0)
        sizes = {len(s) for s in sets}
        num = np.empty((len(sets), ev.n_samples))
        den = np.empty((len(sets), ev.n_samples))
        for size in sizes:  # group by size: one gather per group
            rows = [i for i, s in enumerate(sets) if len(s) == size]
            idx = np.asarray([sets[i] for i in rows], dtype=np.intp)
            num[rows] = ev.weighted_gold[:, idx].sum(axis=2).T
            den[rows] = ev.weights[:, idx].sum(axis=2).T
        losses = batch_losses(ev, num, den, sets)
        for s in sets:
            bits = _bits(s)
            if bits not in self.seen:
                self.seen.add(bits)
                self.tracker.evaluated += 1
        self.tracker.consider_batch(losses, sets)
        return losses

    def greedy(self, single_loss: dict[int, float], deadline: float | None) -> tuple[int, ...]:
        """From the best single expert, the addition with the largest gain per joule, while one
        fits and lowers the loss."""
        ev = self.ev
        first = min(single_loss, key=lambda n: (single_loss[n], n))
        chosen: tuple[int, ...] = (first,)
        loss = single_loss[first]
        while not _past(deadline):
            energy = float(ev.energy[list(chosen)].sum())
            add = [int(u) for u in self.singles if u not in chosen]
            add = [u for u in add if energy + ev.energy[u] <= self.limit_j]
            if not add:
                break
            trials = [tuple(sorted((*chosen, u))) for u in add]
            gain = loss - self._score(trials)
            extra = ev.energy[add]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(extra > 0, gain / np.maximum(extra, 1e-300), math.inf)
            ok = gain > TIE_TOL
            if not ok.any():
                break
            best = max(np.flatnonzero(ok), key=lambda i: (ratio[i], gain[i]))
            chosen, loss = trials[best], loss - float(gain[best])
        return chosen

    def improve(self, start: tuple[int, ...], deadline: float | None) -> tuple[int, ...]:
        """Best-improvement local search from ``start`` with add, drop and swap moves."""
        ev = self.ev
        current = tuple(sorted(start))
        loss = float(self._score([current])[0])
        for _ in range(MAX_LOCAL_MOVES):
            if _past(deadline):
                break
            energy = float(ev.energy[list(current)].sum())
            outside = [int(u) for u in self.singles if u not in current]
            moves: list[tuple[int, ...]] = [
                tuple(sorted((*current, u)))
                for u in outside
                if energy + ev.energy[u] <= self.limit_j
            ]
            if len(current) > 1:
                moves += [tuple(n for n in current if n != v) for v in current]
            for v in current:
                kept = [n for n in current if n != v]
                rest_j = energy - ev.energy[v]
                moves += [
                    tuple(sorted((*kept, u)))
                    for u in outside
                    if rest_j + ev.energy[u] <= self.limit_j
                ]
            if not moves:
                break
            losses = self._score(moves)
            best = int(np.argmin(losses))
            if losses[best] >= loss - TIE_TOL:
                break
            current, loss = moves[best], float(losses[best])
        return current


def _bits(idx: Sequence[int]) -> int:
    bits = 0
    for n in idx:
        bits |= 1 << int(n)
    return bits


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


# ---- branch and bound -------------------------------------------------------------------------


@dataclass
class _Node:
    members: tuple[int, ...]  # instance indices of F, in search order
    bits: int
    num: FloatArray  # per sample, sum of w q over F
    den: FloatArray  # per sample, sum of w over F
    qmax: FloatArray  # per sample, largest gold probability over F (0 when F is empty)
    energy_j: float
    loss: float | None
    candidates: IntArray  # experts after F's last one that fit beside F, in search order
    bound: float  # a lower bound on every set of this subtree (from the parent's batch)
    # The sets the local search scored that contain F (None at the root: all of them).
    seen: list[int] | None = None


@dataclass
class _Frame:
    node: _Node
    child_bound: FloatArray  # per child: lower bound on every set of its subtree (itself too)
    suffix_min: FloatArray  # min of child_bound from each child on
    next: int = 0  # the first child not started
    # Children scored in one batch have no bound of their own while the walk runs (the node's
    # stands); ``lower_bound`` computes theirs when asked, from what is kept here.
    unbounded: BoolArray | None = None
    parts: tuple[IntArray, FloatArray, FloatArray, FloatArray, BoolArray, FloatArray] | None = None


class BranchAndBound:
    """A resumable depth-first branch and bound over the feasible experts (no top_k)."""

    def __init__(
        self,
        ev: Evaluator,
        tracker: Tracker,
        single_loss: dict[int, float],
        seen: set[int] | None = None,
        *,
        energy_bound: bool = False,
        modular_bound: bool = True,
        tangent_bound: bool = False,
    ) -> None:
        self.ev = ev
        self.tracker = tracker
        self.single_loss = single_loss
        self.seen = seen or set()
        self.energy_bound = energy_bound
        self.modular_bound = modular_bound
        self.tangent_bound = tangent_bound
        self.tangent_rounds = 2
        # Small subtrees are scored in compiled code with incremental sums, which needs the
        # weights exp(w - max w) of stable instances; others go node by node.
        self.leaf_sets = LEAF_SETS if ev.stable else 0
        self._weighted_gold_t = np.ascontiguousarray(ev.weighted_gold.T)  # [experts, samples]
        self._weights_t = np.ascontiguousarray(ev.weights.T)
        self.limit_j = _energy_limit(ev)
        self.nodes_expanded = 0
        self.leaves_enumerated = 0
        # The most expensive experts first: few others fit beside them, so the early children,
        # whose subtrees take every later candidate, have small subtrees; the cheap experts,
        # which fit with many others, come last, with few candidates after them.
        order = sorted(single_loss, key=lambda n: (-ev.energy[n], single_loss[n], n))
        self.order = np.asarray(order, dtype=np.intp)
        self.stack: list[_Frame] = []
        self.complete = False
        zeros = np.zeros(ev.n_samples)
        root = _Node((), 0, zeros, zeros, zeros, 0.0, None, self.order, self._oracle_bound())
        self._walk: Iterator[None] = self._expand(root)

    # ---- the walk ---------------------------------------------------------------------------

    def run(self, deadline: float | None) -> bool:
        """Search until the deadline (perf_counter seconds) or the end; True when complete."""
        if self.complete:
            return True
        for _ in self._walk:
            if _past(deadline):
                return False
        self.complete = True
        return True

    def cutoff(self) -> float:
        return self.tracker.best + PRUNE_MARGIN

    def lower_bound(self) -> float:
        """A proven lower bound on the optimum: exact once complete."""
        bound = self.tracker.best
        if self.complete:
            return bound
        if not self.stack:  # not started: the best single expert of each sample
            return min(bound, self._oracle_bound())
        # Children scored in one batch carry their node's bound while the walk runs: those
        # that could be the smallest open bound get their own first (tighter, so still valid).
        settled = bound
        for frame in self.stack:
            if frame.next < len(frame.child_bound):
                later = frame.child_bound[frame.next :]
                if frame.unbounded is not None:
                    later = later[~frame.unbounded[frame.next :]]
                if len(later):
                    settled = min(settled, float(later.min()))
        for frame in self.stack:
            if frame.next < len(frame.suffix_min):
                self._bound_batched(frame, settled)
                bound = min(bound, float(frame.suffix_min[frame.next]))
        return bound

    def _bound_batched(self, frame: _Frame, below: float) -> None:
        """Own bounds for the batched children not started yet whose bound (their node's) is
        below ``below``: only those can be the smallest open bound."""
        if frame.unbounded is None or frame.parts is None:
            return
        rows = np.flatnonzero(frame.unbounded)
        rows = rows[(rows >= frame.next) & (frame.child_bound[rows] < below)]
        if not len(rows):
            return
        cands, num, den, q_forced, rest, energy = frame.parts
        own = self._bounds_of(cands, num[rows], den[rows], q_forced[rows], rest[rows], energy[rows])
        frame.child_bound[rows] = np.maximum(frame.child_bound[rows], own)
        frame.unbounded[rows] = False
        frame.suffix_min = _suffix_min(frame.child_bound)

    def _oracle_bound(self) -> float:
        gold = self.ev.gold[:, self.order].max(axis=1)
        return float(-np.log(np.maximum(MIN_PROB, gold)).mean())

    def _expand(self, node: _Node) -> Iterator[None]:
        ev = self.ev
        cands = node.candidates
        self.nodes_expanded += 1
        energy = node.energy_j + ev.energy[cands]  # [c], summed in the same order as solver.py
        rest = np.triu(energy[:, None] + ev.energy[cands][None, :] <= self.limit_j, k=1)
        x = self._weighted_gold_t[cands]  # [c, samples]
        w = self._weights_t[cands]
        num = node.num[None, :] + x
        den = node.den[None, :] + w
        children = [(*node.members, int(u)) for u in cands]
        if node.members:
            losses = batch_losses(ev, num, den, children)
            new = [(_bits_add(node.bits, int(u)) not in self.seen) for u in cands]
            self.tracker.evaluated += sum(new)
            assert node.loss is not None
            self.tracker.violations += int((losses > node.loss + TIE_TOL).sum())
            self.tracker.consider_batch(losses, children)
        else:  # the singles: scored one by one for the order
            losses = np.array([self.single_loss[int(u)] for u in cands])
        q_forced = np.maximum(node.qmax[None, :], ev.gold[:, cands].T)
        # Children with candidates start at the node's own bound (valid for its whole subtree)
        # and get their own in parts, between which the walk may stop.
        bounds = np.asarray(losses, dtype=float).copy()
        open_rows = np.flatnonzero(rest.any(axis=1))
        bounds[open_rows] = np.minimum(bounds[open_rows], node.bound)
        # How many sets each child's subtree can hold: subsets of its candidates up to the most
        # of them that fit the energy left. Small ones are scored in one batch below, with no
        # bound of their own (scoring them costs less): the node's bound stands for them.
        sizes = _largest_fits(ev.energy[cands], rest, self.limit_j - energy)
        counts = rest.sum(axis=1)
        batched = np.zeros(len(cands), dtype=bool)
        subsets = np.zeros(len(cands), dtype=np.int64)
        for j in open_rows:
            subsets[j] = _subsets_up_to(int(counts[j]), int(sizes[j]))
            batched[j] = subsets[j] <= self.leaf_sets
        frame = _Frame(node, bounds, _suffix_min(bounds))
        seen_here = node.seen if node.seen is not None else list(self.seen)
        frame.unbounded = batched.copy()
        frame.parts = (cands, num, den, q_forced, rest, energy)
        open_rows = open_rows[~batched[open_rows]]
        self.stack.append(frame)
        try:
            step = max(1, BATCH_ELEMENTS // max(1, ev.n_samples * len(cands)))
            for start in range(0, len(open_rows), step):
                rows = open_rows[start : start + step]
                bounds[rows] = self._bounds_of(
                    cands, num[rows], den[rows], q_forced[rows], rest[rows], energy[rows]
                )
                frame.suffix_min = _suffix_min(bounds)
                yield
            j = 0
            while j < len(cands):
                yield  # stopped here, child j and the later ones are open
                if frame.suffix_min[j] > self.cutoff():
                    return  # no set under this node's remaining children can win
                if not rest[j].any() or bounds[j] > self.cutoff():
                    j += 1
                    frame.next = j
                    continue
                if batched[j]:
                    # Small subtrees: every set in them scored in one batch, no bounds, with
                    # those of the next batched children while the batch stays within
                    # GROUP_SETS sets. The walk does not pause inside, so these children stay
                    # open until their sets are all scored.
                    group, total, k = [j], int(subsets[j]), j + 1
                    while k < len(cands) and frame.suffix_min[k] <= self.cutoff():
                        if not rest[k].any() or bounds[k] > self.cutoff():
                            k += 1  # nothing to do for this child
                        elif batched[k] and total + int(subsets[k]) <= GROUP_SETS:
                            group.append(k)
                            total += int(subsets[k])
                            k += 1
                        else:
                            break
                    self._enumerate(
                        node, cands, rest, group, (x, w, num, den), energy, losses, seen_here
                    )
                    j = k
                    frame.next = j
                    continue
                u = cands[j]
                j += 1
                frame.next = j
                child_bits = _bits_add(node.bits, int(u))
                child = _Node(
                    members=children[j - 1],
                    bits=child_bits,
                    num=num[j - 1],
                    den=den[j - 1],
                    qmax=np.maximum(node.qmax, ev.gold[:, u]),
                    energy_j=float(energy[j - 1]),
                    loss=float(losses[j - 1]),
                    candidates=cands[rest[j - 1]],
                    bound=float(bounds[j - 1]),
                    seen=[b for b in seen_here if b & child_bits == child_bits],
                )
                yield from self._expand(child)
        finally:
            self.stack.pop()

    def _enumerate(
        self,
        node: _Node,
        cands: IntArray,
        rest: BoolArray,
        group: list[int],
        sums: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
        energy: FloatArray,
        losses: FloatArray,
        seen_here: list[int],
    ) -> None:
        """Score, for every child j in ``group``, every set F ∪ {u_j} ∪ V (V a non-empty subset
        of its candidates that fits the energy left), in compiled code (``subtrees.py``).

        Only the energy can rule out a set here: every candidate of child j fits beside it alone
        (delays are a maximum, so a set fits its delay budgets when each of its experts does).
        Each set's parent in the search order is the set without its last expert: the
        monotonicity violations are counted against it, as node by node.
        """
        x, w, num, den = sums  # the candidates' [c, samples], the children's [c, samples]
        rows = np.asarray(group, dtype=np.intp)
        out = score_subtrees(
            num[rows],
            den[rows],
            x,
            w,
            self.ev.energy[cands],
            rest[rows],
            rows,
            energy[rows],
            losses[rows],
            limit_j=self.limit_j,
            floor=self.ev.floor_needed,
            threshold=self.tracker.best + RECHECK_TOL,
            recheck=RECHECK_TOL,
            tie_tol=TIE_TOL,
        )
        # Sets the local search scored already are not counted again.
        scored = 0
        for j in group:
            bits = _bits_add(node.bits, int(cands[j]))
            region = bits
            for n in cands[rest[j]]:
                region |= 1 << int(n)
            scored += sum(
                1 for b in seen_here if b != bits and b & bits == bits and b | region == region
            )
        self.leaves_enumerated += len(group)
        self.tracker.violations += out.violations
        self.tracker.evaluated += out.scored - scored
        members = [
            (*node.members, *(int(n) for n in cands[row[:size]]))
            for row, size in zip(out.sets, out.sizes, strict=True)
        ]
        self.tracker.consider_batch(out.losses, members)

    def _bounds_of(
        self,
        cands: IntArray,
        num: FloatArray,
        den: FloatArray,
        q_forced: FloatArray,
        rest: BoolArray,
        energy: FloatArray,
    ) -> FloatArray:
        """Bounds of children [k] from their sums [k, samples] and candidate masks [k, c]."""
        ev = self.ev
        gold = ev.gold[:, cands]  # [samples, c]
        wq = ev.weighted_gold[:, cands]
        wts = ev.weights[:, cands]
        with np.errstate(divide="ignore", invalid="ignore"):
            own = num / den  # [k, samples]: the child itself
            # Prefix bound: candidates by gold probability, the best prefix per sample.
            order = np.argsort(-gold, axis=1, kind="stable")  # [samples, c]
            mask = rest[:, order]  # [k, samples, c]
            gold_sorted = np.take_along_axis(gold, order, axis=1)
            prefix_num = np.cumsum(np.take_along_axis(wq, order, axis=1) * mask, axis=2)
            prefix_den = np.cumsum(np.take_along_axis(wts, order, axis=1) * mask, axis=2)
            ratio = (prefix_num + num[:, :, None]) / np.maximum(
                prefix_den + den[:, :, None], 1e-300
            )
            best = np.maximum(ratio.max(axis=2), own)
            q_max = (gold_sorted * mask).max(axis=2)  # [k, samples]
            if self.energy_bound:
                energy_ratio = self._energy_ratio(cands, num, den, own, q_max, rest, energy)
                best = np.minimum(best, energy_ratio)
        if not ev.stable:
            # Weights may have underflowed in these samples: bound by the best single expert.
            best = np.where(ev.extreme[None, :], np.maximum(q_max, q_forced), best)
        bound = -np.log(np.maximum(MIN_PROB, best)).mean(axis=1)
        if not ev.stable:
            return bound
        # The set-level bounds cost more: only for children the per-sample bound keeps.
        alive = np.flatnonzero(bound <= self.cutoff())
        if len(alive) and self.modular_bound:
            modular = self._modular(cands, num[alive], den[alive], rest[alive], energy[alive])
            bound[alive] = np.maximum(bound[alive], modular)
            alive = alive[bound[alive] <= self.cutoff()]
        if len(alive) and self.tangent_bound:
            point = own[alive]
            for _ in range(self.tangent_rounds):
                tangent, point = self._tangent(
                    cands, num[alive], den[alive], own[alive], point, rest[alive], energy[alive]
                )
                point = np.clip(point, own[alive], best[alive])
                bound[alive] = np.maximum(bound[alive], tangent)
        return bound

    def _tangent(
        self,
        cands: IntArray,
        num: FloatArray,
        den: FloatArray,
        own: FloatArray,
        point: FloatArray,
        rest: BoolArray,
        energy: FloatArray,
    ) -> tuple[FloatArray, FloatArray]:
        """One V for every sample: the mixture's change made modular, then a tangent of -log.

        Per sample, with m = a / b the average of F and T >= w(V),
            m_{F∪V} - m = Σ_{v∈V} w_v (q_v - m) / (b + w(V)) <= Σ_{v∈V} δ_v,
        δ_v = w_v (q_v - m) / (b + w_v) where q_v > m (the denominator is at least that), and
        w_v (q_v - m) / (b + T) where q_v <= m (a loss is smallest over the largest denominator).
        -log max(eps, r) is at least its tangent at any r0 >= e·eps, a decreasing line, so
        L(F ∪ V) >= mean_s [-log r0 + 1 - (m + Σ_V δ_v) / r0]: modular in V, and the best V
        under the energy left is bounded by the fractional knapsack of the gains.
        """
        ev = self.ev
        q = ev.gold[:, cands][None, :, :]  # [1, samples, c]
        w = ev.weights[:, cands][None, :, :]
        e = ev.energy[cands]
        room = self.limit_j - energy  # [k]
        # T: the summed weight of every candidate, or of as many as the energy left can hold.
        count = (
            np.cumsum(np.sort(np.where(rest, e[None, :], np.inf), axis=1), axis=1) <= room[:, None]
        ).sum(axis=1)
        w_rest = np.where(rest[:, None, :], w, 0.0)  # [k, samples, c]
        heaviest = np.sort(w_rest, axis=2)[:, :, ::-1]
        reach = np.arange(len(cands))[None, None, :] < count[:, None, None]
        total_w = np.minimum(w_rest.sum(axis=2), (heaviest * reach).sum(axis=2))  # [k, samples]
        m = own[:, :, None]
        b = den[:, :, None]
        lift = w * (q - m)
        delta = np.where(lift > 0, lift / (b + w), lift / (b + total_w[:, :, None]))
        r0 = np.maximum(point, 3 * MIN_PROB)
        base = (-np.log(r0) + 1 - own / r0).mean(axis=1)
        gain = (delta / r0[:, :, None]).mean(axis=1)  # [k, c]: the bound falls by this
        gain = np.where(rest & (gain > 0), gain, 0.0)
        order = np.argsort(-gain / np.maximum(e, 1e-300)[None, :], axis=1, kind="stable")
        g_sorted = np.take_along_axis(gain, order, axis=1)
        e_sorted = np.where(g_sorted > 0, e[order], 0.0)
        before = np.cumsum(e_sorted, axis=1) - e_sorted
        taken_sorted = (before <= room[:, None]) & (g_sorted > 0)
        taken = np.zeros_like(taken_sorted)
        np.put_along_axis(taken, order, taken_sorted, axis=1)
        # Where the relaxation's own choice puts each sample: the next tangent point.
        reached = own + (delta * taken[:, None, :]).sum(axis=2)
        return base - np.where(taken_sorted, g_sorted, 0.0).sum(axis=1), reached

    def _modular(
        self,
        cands: IntArray,
        num: FloatArray,
        den: FloatArray,
        rest: BoolArray,
        energy: FloatArray,
    ) -> FloatArray:
        """One V for every sample: a modular lower bound on S·L(F ∪ V), then its knapsack.

        Per sample, -log max(eps, (a + x(V)) / (b + w(V))) >= -log(a' + x(V)) + log(b + w(V))
        with a' = max(a, eps (b + T)), T = Σ_U w >= w(V). The first term is a convex function
        of a sum, so supermodular in V: at least its value at ∅ plus each expert's own change.
        The second is concave in w(V) on [0, T]: at least its chord. Both lower bounds are
        modular, and the best V under the energy left is bounded by the fractional knapsack.
        """
        x = self.ev.weighted_gold[:, cands]  # [samples, c]
        w = self.ev.weights[:, cands]
        total_w = _product(rest.astype(float), w.T)  # [k, samples]: T
        a = np.maximum(num, MIN_PROB * (den + total_w))
        with np.errstate(divide="ignore", invalid="ignore"):
            chord = np.where(total_w > 0, np.log1p(total_w / den) / total_w, 0.0)
            gain = -np.log1p(x[None, :, :] / a[:, :, None]).sum(axis=1)  # [k, c]
        gain += _product(chord, w)  # Σ_s c_s w_sv
        base = (np.log(den) - np.log(a)).sum(axis=1)  # at V = ∅
        gain = np.where(rest & (gain < 0), gain, 0.0)
        e = self.ev.energy[cands]
        per_j = gain / np.maximum(e, 1e-300)[None, :]
        order = np.argsort(per_j, axis=1, kind="stable")  # most negative per joule first
        g_sorted = np.take_along_axis(gain, order, axis=1)
        e_sorted = np.where(g_sorted < 0, e[order], 0.0)
        before = np.cumsum(e_sorted, axis=1) - e_sorted
        room = (self.limit_j - energy)[:, None]
        knapsack = np.where(before <= room, g_sorted, 0.0).sum(axis=1)
        return (base + knapsack) / self.ev.n_samples

    def _energy_ratio(
        self,
        cands: IntArray,
        num: FloatArray,
        den: FloatArray,
        own: FloatArray,
        q_max: FloatArray,
        rest: BoolArray,
        energy: FloatArray,
    ) -> FloatArray:
        """(a + X) / (b + X / Q), X the fractional knapsack of w q in the energy left."""
        ev = self.ev
        e = ev.energy[cands]
        wq = ev.weighted_gold[:, cands]  # [samples, c]
        density = wq / np.maximum(e, 1e-300)[None, :]
        order = np.argsort(-density, axis=1, kind="stable")
        mask = rest[:, order]  # [k, samples, c]
        e_sorted = e[order] * mask
        before = np.cumsum(e_sorted, axis=2) - e_sorted  # energy of the items ahead
        room = (self.limit_j - energy)[:, None, None]
        take = mask & (before <= room)
        x = (np.take_along_axis(wq, order, axis=1) * take).sum(axis=2)  # [k, samples]
        grows = q_max > own
        bound = (num + x) / (den + x / np.where(grows, q_max, 1.0))
        return np.where(grows, bound, own)


def _largest_fits(energy: FloatArray, rest: BoolArray, room: FloatArray) -> IntArray:
    """Per row of ``rest`` [k, c], at least the largest number of its experts that fit together
    in ``room`` [k]: as many of the cheapest as fit (with a margin, so that rounding can only
    make it larger)."""
    cheapest = np.cumsum(np.sort(np.where(rest, energy[None, :], np.inf), axis=1), axis=1)
    return (cheapest <= (room + 1e-9 * (1 + np.abs(room)))[:, None]).sum(axis=1)


def _subsets_up_to(items: int, size: int) -> int:
    return sum(math.comb(items, k) for k in range(1, min(items, size) + 1))


def _product(a: FloatArray, b: FloatArray) -> FloatArray:
    """a @ b in row blocks of at most PRODUCT_BLOCK multiply-adds each (one BLAS thread)."""
    rows = max(1, PRODUCT_BLOCK // max(1, b.shape[0] * b.shape[1]))
    if len(a) <= rows:
        return a @ b
    out = np.empty((len(a), b.shape[1]))
    for start in range(0, len(a), rows):
        np.matmul(a[start : start + rows], b, out=out[start : start + rows])
    return out


def _suffix_min(values: FloatArray) -> FloatArray:
    return np.minimum.accumulate(values[::-1])[::-1].copy()


def _bits_add(bits: int, n: int) -> int:
    return bits | (1 << n)


# ---- top_k: enumeration, resumable --------------------------------------------------------------


def topk_walk(ev: Evaluator, tracker: Tracker) -> Iterator[None]:
    """Every feasible set under top_k; costs are not monotone, so prune on their lower bound."""
    n = ev.n_experts

    def expand(
        members: list[int], mask: BoolArray, parent: float | None, start: int
    ) -> Iterator[None]:
        for u in range(start, n):
            yield
            child_mask = mask.copy()
            child_mask[u] = True
            undecided = np.zeros(n, dtype=bool)
            undecided[u + 1 :] = True
            energy, delay = ev.topk_cost_bound(child_mask, undecided)
            if not ev.fits_plain(energy, delay):
                continue
            child = [*members, u]
            loss = tracker.evaluate(child, parent) if ev.fits(child) else None
            yield from expand(child, child_mask, loss, u + 1)

    yield from expand([], np.zeros(n, dtype=bool), None, 0)


# ---- the whole moe2 search ----------------------------------------------------------------------


class AnytimeSearch:
    """moe2 on one instance: incumbent, then branch and bound (or top_k enumeration), resumable.

    ``run(deadline)`` works until the deadline or the end of the search and may be called again
    to continue; ``seeds`` are sets (instance indices) to start the local search from as well,
    such as the previous plan.
    """

    def __init__(self, ev: Evaluator, seeds: Sequence[Sequence[int]] = ()) -> None:
        self.ev = ev
        self.tracker = Tracker(ev)
        self.singles = [n for n in range(ev.n_experts) if ev.fits([n])]
        self.seeds = [tuple(sorted(int(n) for n in s)) for s in seeds if len(s)]
        self.complete = not self.singles
        self.bnb: BranchAndBound | None = None
        self._topk: Iterator[None] | None = None
        self._started = False

    def run(self, deadline: float | None) -> bool:
        if self.complete:
            return True
        if not self._started:
            self._started = True
            self._incumbent(deadline)
        if self.ev.top_k is not None:
            assert self._topk is not None
            for _ in self._topk:
                if _past(deadline):
                    return False
            self.complete = True
            return True
        assert self.bnb is not None
        self.complete = self.bnb.run(deadline)
        return self.complete

    def _incumbent(self, deadline: float | None) -> None:
        ev = self.ev
        if ev.top_k is not None:
            for seed in [_topk_greedy(ev), *self.seeds]:
                if ev.fits(list(seed)):
                    self.tracker.evaluate(list(seed))
            self._topk = topk_walk(ev, self.tracker)
            return
        single_loss = {n: self.tracker.evaluate([n]) for n in self.singles}
        local = LocalSearch(ev, self.tracker, self.singles)
        local.seen.update(1 << n for n in self.singles)
        starts = [local.greedy(single_loss, deadline)]
        usable = set(self.singles)
        starts += [s for s in self.seeds if set(s) <= usable and ev.fits(list(s))]
        for start in starts:
            local.improve(start, deadline)
        self.bnb = BranchAndBound(ev, self.tracker, single_loss, local.seen)

    def lower_bound(self) -> float | None:
        """A proven lower bound on the optimal loss; None under top_k before the search ends."""
        if self.complete:
            return self.tracker.best
        if self.bnb is not None:
            return self.bnb.lower_bound()
        if self.ev.top_k is not None or not self.singles:
            return None
        gold = self.ev.gold[:, self.singles].max(axis=1)
        return min(self.tracker.best, float(-np.log(np.maximum(MIN_PROB, gold)).mean()))


def _topk_greedy(ev: Evaluator) -> tuple[int, ...]:
    """Greedy by loss gain under top_k (costs from ``Evaluator.fits``): a first incumbent."""
    singles = [n for n in range(ev.n_experts) if ev.fits([n])]
    chosen = (min(singles, key=lambda n: (ev.loss([n]), n)),)
    loss = ev.loss(list(chosen))
    improved = True
    while improved:
        improved = False
        for u in range(ev.n_experts):
            trial = tuple(sorted((*chosen, u)))
            if u in chosen or not ev.fits(list(trial)):
                continue
            trial_loss = ev.loss(list(trial))
            if trial_loss < loss - TIE_TOL:
                chosen, loss, improved = trial, trial_loss, True
    return chosen
