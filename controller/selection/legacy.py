"""Today's ``moe2`` search before the anytime solver (no time limit, one evaluation per node),
kept as the reference that ``benchmarks/selection.py`` and the tests compare the new one with.

``legacy_moe2(instance, deadline)`` returns the selected ids and loss, or None when the search
did not end by ``deadline`` (perf_counter seconds). Plain instances only (no top_k).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from controller.selection.instance import SelectionInstance
from controller.selection.loss import BoolArray, Evaluator, FloatArray
from controller.selection.search import PRUNE_MARGIN, Tracker

_Tracker = Tracker


class _OutOfTime(Exception):
    pass


@dataclass
class _Node:
    members: list[int]  # instance indices of F, in search order
    num: FloatArray  # per sample, sum of w q over F
    den: FloatArray  # per sample, sum of w over F
    energy_j: float
    delay_s: FloatArray  # per category, max over F (aggregation not included)
    mask: BoolArray  # F as a mask over experts
    loss: float | None


@dataclass(frozen=True)
class LegacyResult:
    selected: list[str]
    loss: float
    subsets_evaluated: int
    runtime_s: float


def legacy_moe2(instance: SelectionInstance, deadline: float | None = None) -> LegacyResult | None:
    """The branch and bound as it was, or None when it passes ``deadline``."""
    started = time.perf_counter()
    ev = Evaluator(instance)
    if ev.top_k is not None:
        raise ValueError("the legacy search is compared on plain instances only")
    tracker = _Tracker(ev)
    singles = [n for n in range(ev.n_experts) if ev.fits([n])]
    if not singles:
        return None
    single_loss = {n: tracker.evaluate([n]) for n in singles}
    try:
        _branch_and_bound(ev, tracker, single_loss, deadline)
    except _OutOfTime:
        return None
    winner = tracker.winner()
    assert winner is not None
    return LegacyResult(
        [instance.experts[n].id for n in winner],
        ev.loss(np.asarray(winner, dtype=np.intp)),
        tracker.evaluated,
        time.perf_counter() - started,
    )


def _branch_and_bound(
    ev: Evaluator, tracker: _Tracker, single_loss: dict[int, float], deadline: float | None
) -> None:
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
        if deadline is not None and time.perf_counter() > deadline:
            raise _OutOfTime
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
