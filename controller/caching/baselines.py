"""Baselines: most-popular-first and random placements (per-server independent caching is
``decomposition.independent``). Every one respects the capacities.

* ``popular``: the popularity of an item (layer, expert) is its activation probability mass
  sum_u w_u sum_{A containing it} pi_{u,l}(A) (weights as given; unweighted if they are all 0).
  Each server, on its own, goes through the items from most to least popular (ties: instance
  order) and caches each one that still fits, until nothing more fits. Every server thus caches
  (nearly) the same popular experts: the weakness of this baseline on a fleet.
* ``random``: each server goes through the items in its own random order (seeded) and caches each
  one that still fits.
"""

from __future__ import annotations

import numpy as np

from controller.caching.compiled import BoolArray, CompiledInstance


def popularity(ci: CompiledInstance) -> np.ndarray:
    """(N,): activation probability mass of each item, weighted by the user weights."""
    weight = ci.set_weight if ci.weight.sum() > 0 else ci.set_prob
    counts = np.zeros(ci.n_items)
    for j in range(ci.members.shape[1]):
        ok = ci.members[:, j] >= 0
        np.add.at(counts, ci.members[ok, j], weight[ok])
    return counts


def _fill_in_order(ci: CompiledInstance, placement: BoolArray, m: int, order: np.ndarray) -> None:
    used = 0.0
    for n in order:
        if ci.fits(m, used, float(ci.size[n])):
            placement[m, n] = True
            used += float(ci.size[n])


def most_popular(ci: CompiledInstance) -> BoolArray:
    pop = popularity(ci)
    order = np.lexsort((np.arange(ci.n_items), -pop))
    placement = ci.empty()
    for m in range(ci.n_servers):
        _fill_in_order(ci, placement, m, order)
    return placement


def random_placement(ci: CompiledInstance, seed: int = 0) -> BoolArray:
    rng = np.random.default_rng(seed)
    placement = ci.empty()
    for m in range(ci.n_servers):
        _fill_in_order(ci, placement, m, rng.permutation(ci.n_items))
    return placement
