"""Choose the experts to activate under energy and delay budgets (DESIGN.md section 3).

``solve(instance, algorithm)`` runs one of:

* ``moe2``: discrete monotonic optimisation, a depth-first branch and bound over the Boolean
  lattice. Experts are ordered by their single-expert loss; a node (F forced in, U undecided) is
  pruned when F breaks a budget (energy and every delay only grow as experts are added; experts
  of U that no longer fit beside F are dropped from U) or when a lower bound on the loss of every
  set F ∪ U' (U' ⊆ U) cannot beat the incumbent. The bound holds for every reachable set, not only
  the largest one, so the result is the exhaustive optimum even where the loss is not monotone.
  With ``top_k`` below the number of experts the bound does not hold for top-k mixtures and the
  solver enumerates every feasible set (pruning only on budgets, with a bound on the top-k costs).
* ``exhaustive``: every non-empty feasible set (budget pruning only).
* ``greedy``: best feasible single expert, then the addition with the largest loss decrease per
  joule while it fits and lowers the loss.
* ``random``: a random feasible set (seeded).
* ``best_single``: the best feasible single expert.
* ``uniform``: the set ``moe2`` selects, evaluated as a uniform-weight ensemble (the gate's value).

Ties in loss (within ``TIE_TOL``) go to fewer experts, then lower energy, then the lexicographic
order of expert indices, the same in every algorithm, so ``moe2`` and ``exhaustive`` return the
same set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from controller.selection.instance import SelectionInstance
from controller.selection.loss import BoolArray, Evaluator, FloatArray

Algorithm = Literal["moe2", "exhaustive", "greedy", "random", "best_single", "uniform"]
ALGORITHMS: tuple[str, ...] = ("moe2", "exhaustive", "greedy", "random", "best_single", "uniform")

# Losses this close are a tie (then fewer experts, lower energy, lower indices win).
TIE_TOL = 1e-12
# A node is pruned only when its bound exceeds the incumbent by more than this: rounding in the
# bound can never cut off a set that ties with or beats the incumbent.
PRUNE_MARGIN = 1e-9


class SelectionResult(BaseModel):
    """The result object of DESIGN.md section 6, plus runtime and monotonicity violations."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    selected: list[str] = Field(description="Chosen expert ids, in instance order")
    loss: float | None = Field(description="L(S); null when nothing is feasible")
    accuracy: float | None
    energy_j: float | None = Field(description="Energy per query (top-k: mean of what ran)")
    delay_s: dict[str, float] = Field(description="Delay per budget category, aggregation included")
    feasible: bool
    optimal: bool = Field(description="Proven optimal (moe2 and exhaustive)")
    subsets_evaluated: int = Field(ge=0, description="Subsets whose loss was computed")
    monotonicity_violations: int | None = Field(
        description="Evaluated additions F -> F+n that raised the loss (search algorithms only)"
    )
    algorithm: str
    runtime_s: float


@dataclass
class _Tracker:
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

    def winner(self) -> tuple[int, ...] | None:
        tied = [s for x, s in self.pool if x <= self.best + TIE_TOL]
        return min(tied, key=lambda s: _tie_key(self.ev, s), default=None)


def _tie_key(ev: Evaluator, idx: tuple[int, ...]) -> tuple[int, float, tuple[int, ...]]:
    return (len(idx), ev.energy_j(np.asarray(idx, dtype=np.intp)), idx)


def _feasible_singles(ev: Evaluator) -> list[int]:
    return [n for n in range(ev.n_experts) if ev.fits([n])]


# ---- branch and bound -----------------------------------------------------------------------


@dataclass
class _Node:
    members: list[int]  # instance indices of F, in search order
    num: FloatArray  # per sample, sum of w q over F
    den: FloatArray  # per sample, sum of w over F
    energy_j: float
    delay_s: FloatArray  # per category, max over F (aggregation not included)
    mask: BoolArray  # F as a mask over experts
    loss: float | None


def _branch_and_bound(ev: Evaluator, tracker: _Tracker, single_loss: dict[int, float]) -> None:
    order = sorted(single_loss, key=lambda n: (single_loss[n], ev.energy[n], n))
    n_cat = len(ev.categories)
    root = _Node(
        members=[],
        num=np.zeros(ev.n_samples),
        den=np.zeros(ev.n_samples),
        energy_j=0.0,
        delay_s=np.zeros(n_cat),
        mask=np.zeros(ev.n_experts, dtype=bool),
        loss=None,
    )

    def expand(node: _Node, candidates: list[int]) -> None:
        hopeless = False  # the last child could not beat the incumbent
        for j, u in enumerate(candidates):
            if hopeless:
                # F plus any subset of the remaining candidates: when that cannot win, stop here.
                suffix = np.zeros(ev.n_experts, dtype=bool)
                suffix[candidates[j:]] = True
                if ev.bound_from_sums(node.num, node.den, node.mask, suffix) > cutoff():
                    return
            energy = node.energy_j + ev.energy[u]
            delay = np.maximum(node.delay_s, ev.delay[u])
            rest = np.asarray(candidates[j + 1 :], dtype=np.intp)
            if len(rest):
                ok = ev.fits_plain(energy + ev.energy[rest], np.maximum(delay, ev.delay[rest]))
                rest = rest[ok]
            num = node.num + ev.weighted_gold[:, u]
            den = node.den + ev.weights[:, u]
            mask = node.mask.copy()
            mask[u] = True
            if len(rest):
                undecided = np.zeros(ev.n_experts, dtype=bool)
                undecided[rest] = True
                hopeless = ev.bound_from_sums(num, den, mask, undecided) > cutoff()
                if hopeless:
                    continue
            members = [*node.members, u]
            if len(members) == 1:
                loss = single_loss[u]
            else:
                loss = tracker.evaluate(sorted(members), node.loss)
            if len(rest):
                expand(_Node(members, num, den, energy, delay, mask, loss), [int(r) for r in rest])
            else:
                hopeless = loss > cutoff()

    def cutoff() -> float:
        return tracker.best + PRUNE_MARGIN

    expand(root, order)


# ---- enumeration ----------------------------------------------------------------------------


def _enumerate_plain(ev: Evaluator, tracker: _Tracker, singles: list[int]) -> None:
    """Every feasible set without top_k: supersets of an infeasible set are never feasible."""

    def expand(
        members: list[int],
        energy: float,
        delay: FloatArray,
        parent: float | None,
        candidates: list[int],
    ) -> None:
        for j, u in enumerate(candidates):
            e2 = energy + ev.energy[u]
            d2 = np.maximum(delay, ev.delay[u])
            rest = np.asarray(candidates[j + 1 :], dtype=np.intp)
            if len(rest):
                rest = rest[ev.fits_plain(e2 + ev.energy[rest], np.maximum(d2, ev.delay[rest]))]
            loss = tracker.evaluate([*members, u], parent)
            if len(rest):
                expand([*members, u], e2, d2, loss, [int(r) for r in rest])

    expand([], 0.0, np.zeros(len(ev.categories)), None, singles)


def _enumerate_topk(ev: Evaluator, tracker: _Tracker) -> None:
    """Every feasible set under top_k; costs are not monotone, so prune on their lower bound."""
    n = ev.n_experts

    def expand(members: list[int], mask: BoolArray, parent: float | None, start: int) -> None:
        for u in range(start, n):
            child_mask = mask.copy()
            child_mask[u] = True
            undecided = np.zeros(n, dtype=bool)
            undecided[u + 1 :] = True
            energy, delay = ev.topk_cost_bound(child_mask, undecided)
            if not ev.fits_plain(energy, delay):
                continue
            child = [*members, u]
            loss = tracker.evaluate(child, parent) if ev.fits(child) else None
            expand(child, child_mask, loss, u + 1)

    expand([], np.zeros(n, dtype=bool), None, 0)


# ---- the algorithms -------------------------------------------------------------------------


@dataclass
class _Outcome:
    selected: tuple[int, ...] | None
    evaluated: int
    optimal: bool
    violations: int | None = None


def _exact(ev: Evaluator, algorithm: str) -> _Outcome:
    tracker = _Tracker(ev)
    singles = _feasible_singles(ev)
    if not singles:
        return _Outcome(None, 0, False, 0)
    if ev.top_k is not None:
        _enumerate_topk(ev, tracker)
    elif algorithm == "exhaustive":
        _enumerate_plain(ev, tracker, singles)
    else:
        single_loss = {n: tracker.evaluate([n]) for n in singles}
        _branch_and_bound(ev, tracker, single_loss)
    return _Outcome(tracker.winner(), tracker.evaluated, True, tracker.violations)


def _best_single(ev: Evaluator) -> _Outcome:
    tracker = _Tracker(ev)
    for n in _feasible_singles(ev):
        tracker.evaluate([n])
    return _Outcome(tracker.winner(), tracker.evaluated, False)


def _greedy(ev: Evaluator) -> _Outcome:
    start = _best_single(ev)
    if start.selected is None:
        return start
    evaluated = start.evaluated
    violations = 0
    chosen = list(start.selected)
    loss = ev.loss(chosen)
    while True:
        # The addition with the largest (gain per joule, gain), the lowest index on ties.
        best_key: tuple[float, float] | None = None
        best_u, best_loss = -1, loss
        for u in range(ev.n_experts):
            if u in chosen:
                continue
            trial = sorted([*chosen, u])
            if not ev.fits(trial):
                continue
            trial_loss = ev.loss(trial)
            evaluated += 1
            gain = loss - trial_loss
            if gain < -TIE_TOL:
                violations += 1
            if gain <= TIE_TOL:
                continue
            # Under top_k an addition can even lower the energy per query: an infinite ratio.
            extra_j = ev.energy_j(trial) - ev.energy_j(chosen)
            key = (gain / extra_j if extra_j > 0 else math.inf, gain)
            if best_key is None or key > best_key:
                best_key, best_u, best_loss = key, u, trial_loss
        if best_key is None:
            break
        chosen = sorted([*chosen, best_u])
        loss = best_loss
    return _Outcome(tuple(chosen), evaluated, False, violations)


def _random(ev: Evaluator, seed: int) -> _Outcome:
    singles = _feasible_singles(ev)
    if not singles:
        return _Outcome(None, 0, False)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.choice(singles))]
    others = [n for n in range(ev.n_experts) if n != chosen[0]]
    for u in rng.permutation(others):
        if rng.random() < 0.5 and ev.fits(sorted([*chosen, int(u)])):
            chosen = sorted([*chosen, int(u)])
    return _Outcome(tuple(chosen), 1, False)


def solve(
    instance: SelectionInstance, algorithm: str = "moe2", *, seed: int = 0
) -> SelectionResult:
    """Choose experts under the instance's budgets with ``algorithm`` (see ``ALGORITHMS``)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    started = time.perf_counter()
    ev = Evaluator(instance)
    scoring = ev
    if algorithm in ("moe2", "exhaustive"):
        outcome = _exact(ev, algorithm)
    elif algorithm == "uniform":
        searched = _exact(ev, "moe2")
        scoring = Evaluator(instance, uniform=True)
        evaluated = searched.evaluated + (searched.selected is not None)
        outcome = _Outcome(searched.selected, evaluated, False)
    elif algorithm == "greedy":
        outcome = _greedy(ev)
    elif algorithm == "random":
        outcome = _random(ev, seed)
    else:
        outcome = _best_single(ev)

    if outcome.selected is None:
        return SelectionResult(
            selected=[],
            loss=None,
            accuracy=None,
            energy_j=None,
            delay_s={},
            feasible=False,
            optimal=False,
            subsets_evaluated=outcome.evaluated,
            monotonicity_violations=outcome.violations,
            algorithm=algorithm,
            runtime_s=time.perf_counter() - started,
        )
    idx = np.asarray(outcome.selected, dtype=np.intp)
    delay = ev.delay_s(idx)
    return SelectionResult(
        selected=[instance.experts[n].id for n in idx],
        loss=scoring.loss(idx),
        accuracy=scoring.accuracy(idx),
        energy_j=ev.energy_j(idx),
        delay_s={c: float(d) for c, d in zip(ev.categories, delay, strict=True)},
        feasible=True,
        optimal=outcome.optimal,
        subsets_evaluated=outcome.evaluated,
        monotonicity_violations=outcome.violations,
        algorithm=algorithm,
        runtime_s=time.perf_counter() - started,
    )
