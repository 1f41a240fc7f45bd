"""Choose the experts to activate under energy and delay budgets (docs/design.md section 3).

``solve(instance, algorithm)`` runs one of:

* ``moe2``: discrete monotonic optimisation, a depth-first branch and bound over the Boolean
  lattice. Experts are ordered by decreasing energy; a node (F forced in, U undecided) is
  pruned when F breaks a budget (energy and every delay only grow as experts are added; experts
  of U that no longer fit beside F are dropped from U) or when a lower bound on the loss of every
  set F ∪ U' (U' ⊆ U) cannot beat the incumbent. The bound holds for every reachable set, not only
  the largest one, so the result is the exhaustive optimum even where the loss is not monotone.
  With ``top_k`` below the number of experts the bound does not hold for top-k mixtures and the
  solver enumerates every feasible set (pruning only on budgets, with a bound on the top-k costs).
  Small subtrees are scored in one batch instead. The search (``search.AnytimeSearch``) starts
  from greedy plus local search and honours ``time_limit_s``: past it, the best set found with a
  proven lower bound and relative gap.
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
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from controller.selection.instance import SelectionInstance
from controller.selection.loss import MIN_PROB, Evaluator, FloatArray
from controller.selection.search import TIE_TOL, AnytimeSearch, topk_walk
from controller.selection.search import Tracker as _Tracker

Algorithm = Literal["moe2", "exhaustive", "greedy", "random", "best_single", "uniform"]
ALGORITHMS: tuple[str, ...] = ("moe2", "exhaustive", "greedy", "random", "best_single", "uniform")


class SelectionResult(BaseModel):
    """The result object of docs/design.md section 6, plus runtime and monotonicity violations."""

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
    gap: float | None = Field(
        default=None,
        description="Proven relative gap (loss - bound) / loss: 0 when optimal; null when unknown",
    )
    bound: float | None = Field(
        default=None, description="Proven lower bound on the optimal loss (moe2, exhaustive)"
    )


def _feasible_singles(ev: Evaluator) -> list[int]:
    return [n for n in range(ev.n_experts) if ev.fits([n])]


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


# ---- the algorithms -------------------------------------------------------------------------


@dataclass
class _Outcome:
    selected: tuple[int, ...] | None
    evaluated: int
    optimal: bool
    violations: int | None = None
    bound: float | None = None  # proven lower bound on the optimal loss, when known


def _exhaustive(ev: Evaluator) -> _Outcome:
    tracker = _Tracker(ev)
    singles = _feasible_singles(ev)
    if not singles:
        return _Outcome(None, 0, False, 0)
    if ev.top_k is not None:
        for _ in topk_walk(ev, tracker):
            pass
    else:
        _enumerate_plain(ev, tracker, singles)
    return _Outcome(tracker.winner(), tracker.evaluated, True, tracker.violations, tracker.best)


def _moe2(search: AnytimeSearch, deadline: float | None) -> _Outcome:
    complete = search.run(deadline)
    tracker = search.tracker
    selected = tracker.winner()
    if selected is None:
        return _Outcome(None, tracker.evaluated, False, tracker.violations)
    return _Outcome(selected, tracker.evaluated, complete, tracker.violations, search.lower_bound())


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
    instance: SelectionInstance,
    algorithm: str = "moe2",
    *,
    seed: int = 0,
    time_limit_s: float | None = None,
) -> SelectionResult:
    """Choose experts under the instance's budgets with ``algorithm`` (see ``ALGORITHMS``).

    ``time_limit_s`` bounds ``moe2`` (and ``uniform``, which runs it): when the search has not
    ended by then, the best set found is returned with ``optimal`` false and the proven ``bound``
    and ``gap``. Other algorithms ignore it.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if time_limit_s is not None and not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be positive, not {time_limit_s}")
    started = time.perf_counter()
    ev = Evaluator(instance)
    if algorithm in ("moe2", "uniform"):
        search = AnytimeSearch(ev)
        deadline = None if time_limit_s is None else started + time_limit_s
        return search_result(search, algorithm, started, deadline)
    scoring = ev
    if algorithm == "exhaustive":
        outcome = _exhaustive(ev)
    elif algorithm == "greedy":
        outcome = _greedy(ev)
    elif algorithm == "random":
        outcome = _random(ev, seed)
    else:
        outcome = _best_single(ev)
    return _result(ev, scoring, outcome, algorithm, started)


def search_result(
    search: AnytimeSearch,
    algorithm: str,
    started: float,
    deadline: float | None,
) -> SelectionResult:
    """Run (or resume) a moe2 search until ``deadline`` and describe where it stands.

    ``uniform`` scores the set found with equal weights (and is never called optimal).
    """
    ev = search.ev
    outcome = _moe2(search, deadline)
    if algorithm == "uniform":
        scoring = Evaluator(ev.instance, uniform=True)
        evaluated = outcome.evaluated + (outcome.selected is not None)
        return _result(
            ev, scoring, _Outcome(outcome.selected, evaluated, False), algorithm, started
        )
    return _result(ev, ev, outcome, algorithm, started)


def _result(
    ev: Evaluator,
    scoring: Evaluator,
    outcome: _Outcome,
    algorithm: str,
    started: float,
) -> SelectionResult:
    instance = ev.instance
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
    loss = scoring.loss(idx)
    gap, bound = None, None
    if outcome.optimal:
        gap, bound = 0.0, loss
    elif outcome.bound is not None:
        bound = min(outcome.bound, loss)
        gap = (loss - bound) / max(abs(loss), MIN_PROB)
    return SelectionResult(
        selected=[instance.experts[n].id for n in idx],
        loss=loss,
        accuracy=scoring.accuracy(idx),
        energy_j=ev.energy_j(idx),
        delay_s={c: float(d) for c, d in zip(ev.categories, delay, strict=True)},
        feasible=True,
        optimal=outcome.optimal,
        subsets_evaluated=outcome.evaluated,
        monotonicity_violations=outcome.violations,
        algorithm=algorithm,
        runtime_s=time.perf_counter() - started,
        gap=gap,
        bound=bound,
    )
