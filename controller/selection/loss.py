"""Loss, accuracy, energy and delay of a set of experts, and the branch-and-bound lower bound.

For a set S the gate is the softmax of the logits restricted to S, so the mixture's probability of
the gold answer is a weighted average of the experts' gold probabilities q_n with weights
w_n = exp(logit_n) (docs/design.md section 3):

    L(S) = mean_samples -log max(1e-12, sum_{n in S} w_n q_n / sum_{n in S} w_n)

Everything that does not depend on S (gold probabilities, exp of the logits, padded choice
probabilities, per-sample orders) is computed once, so one subset costs O(samples x |S|).

With ``top_k = k`` smaller than |S|, each sample runs only the k experts of S with the largest gate
logits (ties: the lower expert index) and the softmax is renormalised over them; energy per query
is then the mean over samples of the energy of the experts actually run, and the delay per category
is the worst case over samples of the slowest expert run, plus the aggregation delay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from controller.selection.instance import SelectionInstance

# The mixture probability is clipped here before the log (docs/design.md section 6).
MIN_PROB = 1e-12
# Relative slack on budgets, so that 0.1 + 0.2 J fits a 0.3 J budget.
BUDGET_RTOL = 1e-9
# Above this spread of logits within one sample, exp(logit - max) may underflow: such samples are
# evaluated with the maximum of each subset subtracted, and bounded by the best single expert.
STABLE_SPREAD = 600.0

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]


def _within(value: float | FloatArray, budget: float | FloatArray) -> bool:
    return bool(np.all(value <= budget * (1 + BUDGET_RTOL) + 1e-12))


class Evaluator:
    """Precomputed arrays of one instance and vectorised evaluation of subsets.

    Subsets are given as sorted arrays (or sequences) of expert indices in instance order.
    ``uniform=True`` gives every expert of a set the same weight (the uniform-ensemble baseline);
    which experts run under ``top_k`` is still decided by the instance's gate logits.
    """

    def __init__(self, instance: SelectionInstance, *, uniform: bool = False) -> None:
        self.instance = instance
        self.n_experts = len(instance.experts)
        samples = instance.samples
        self.n_samples = len(samples.labels)
        self.labels: IntArray = np.asarray(samples.labels, dtype=np.intp)
        self.categories = instance.categories
        self.energy: FloatArray = np.array([e.energy_j for e in instance.experts], dtype=float)
        self.delay: FloatArray = np.array(
            [[e.delay_s[c] for c in self.categories] for e in instance.experts], dtype=float
        ).reshape(self.n_experts, len(self.categories))
        self.aggregation_delay_s = instance.aggregation_delay_s
        self.energy_budget = instance.budgets.energy_j
        self.delay_budget: FloatArray = np.array(
            [instance.budgets.delay_s[c] for c in self.categories], dtype=float
        )
        k = instance.top_k
        # top_k at or above the number of experts never drops anyone: the plain mixture.
        self.top_k: int | None = k if k is not None and k < self.n_experts else None

        max_choices = max(len(p[0]) for p in samples.choice_probs)
        self.probs: FloatArray = np.zeros((self.n_samples, self.n_experts, max_choices))
        for s, rows in enumerate(samples.choice_probs):
            self.probs[s, :, : len(rows[0])] = rows
        self.gold: FloatArray = self.probs[np.arange(self.n_samples), :, self.labels]

        # Logits that pick the experts run under top_k, and logits that weight the mixture.
        self.rank_logits: FloatArray = np.asarray(samples.gate_logits, dtype=float)
        self.uniform = uniform
        logits = np.zeros_like(self.rank_logits) if uniform else self.rank_logits
        self.logits = logits
        spread = logits.max(axis=1) - logits.min(axis=1)
        self.extreme: BoolArray = spread > STABLE_SPREAD
        self.stable = not bool(self.extreme.any())
        self.weights: FloatArray = np.exp(logits - logits.max(axis=1, keepdims=True))
        self.weighted_gold: FloatArray = self.weights * self.gold
        # A mixture's gold probability is a weighted average of its experts': when every gold
        # probability is well above MIN_PROB (twice it, against rounding), no mixture needs the
        # floor.
        self.floor_needed = bool(self.gold.size and self.gold.min() < 2 * MIN_PROB)

        # For the bound: per sample, experts by gold probability, highest first.
        self._q_order: IntArray = np.argsort(-self.gold, axis=1, kind="stable")
        # [2, samples, experts]: w q and w in that order, so one cumsum serves both sums.
        self._sorted_sums: FloatArray = np.stack(
            [
                np.take_along_axis(self.weighted_gold, self._q_order, axis=1),
                np.take_along_axis(self.weights, self._q_order, axis=1),
            ]
        )
        # For top_k: per sample, experts by gate logit, highest first, ties to the lower index.
        self._logit_order: IntArray = np.argsort(-self.rank_logits, axis=1, kind="stable")
        self._energy_by_logit: FloatArray = self.energy[self._logit_order]

    # ---- the mixture -------------------------------------------------------------------------

    def _weights(self, idx: IntArray) -> FloatArray:
        """Unnormalised gate weights of the experts ``idx`` per sample: [samples, |S|]."""
        if self.stable:
            w = self.weights[:, idx]
        else:
            z = self.logits[:, idx]
            w = np.exp(z - z.max(axis=1, keepdims=True))
        if self.top_k is not None and len(idx) > self.top_k:
            w = w * self.run_mask(idx)
        return w

    def run_mask(self, idx: Sequence[int] | IntArray) -> BoolArray:
        """Which experts of ``idx`` run for each sample: [samples, |S|] (all, without top_k)."""
        idx = np.asarray(idx, dtype=np.intp)
        k = self.top_k
        if k is None or len(idx) <= k:
            return np.ones((self.n_samples, len(idx)), dtype=bool)
        order = np.argsort(-self.rank_logits[:, idx], axis=1, kind="stable")[:, :k]
        mask = np.zeros((self.n_samples, len(idx)), dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask

    def gold_mixture(self, idx: Sequence[int] | IntArray) -> FloatArray:
        """The mixture's probability of the gold answer per sample."""
        idx = np.asarray(idx, dtype=np.intp)
        w = self._weights(idx)
        return (w * self.gold[:, idx]).sum(axis=1) / w.sum(axis=1)

    def loss(self, idx: Sequence[int] | IntArray) -> float:
        """L(S): mean over samples of -log max(1e-12, p_S(gold))."""
        return float(-np.log(np.maximum(MIN_PROB, self.gold_mixture(idx))).mean())

    def accuracy(self, idx: Sequence[int] | IntArray) -> float:
        """Share of samples whose mixture's argmax (lowest index on ties) is the gold label."""
        idx = np.asarray(idx, dtype=np.intp)
        w = self._weights(idx)
        mixture = np.einsum("sn,snc->sc", w, self.probs[:, idx, :]) / w.sum(axis=1)[:, None]
        return float((mixture.argmax(axis=1) == self.labels).mean())

    # ---- costs -------------------------------------------------------------------------------

    def energy_j(self, idx: Sequence[int] | IntArray) -> float:
        """Energy per query: sum over S, or under top_k the mean over samples of what ran."""
        idx = np.asarray(idx, dtype=np.intp)
        if self.top_k is None or len(idx) <= self.top_k:
            return float(self.energy[idx].sum())
        return float((self.run_mask(idx) * self.energy[idx]).sum(axis=1).mean())

    def delay_s(self, idx: Sequence[int] | IntArray) -> FloatArray:
        """Delay per budget category: slowest expert run (worst case over samples) + aggregation."""
        idx = np.asarray(idx, dtype=np.intp)
        if len(idx) == 0 or not self.categories:
            return np.zeros(len(self.categories))
        if self.top_k is not None and len(idx) > self.top_k:
            idx = idx[self.run_mask(idx).any(axis=0)]
        return self.delay[idx].max(axis=0) + self.aggregation_delay_s

    def fits(self, idx: Sequence[int] | IntArray) -> bool:
        """Whether the set respects the energy budget and every delay budget."""
        return _within(self.energy_j(idx), self.energy_budget) and _within(
            self.delay_s(idx), self.delay_budget
        )

    def fits_plain(self, energy_j: float | FloatArray, delay_s: FloatArray) -> BoolArray:
        """Budget test on summed energies [m] and per-expert delay maxima [m, categories]."""
        energy_ok = np.asarray(energy_j) <= self.energy_budget * (1 + BUDGET_RTOL) + 1e-12
        delay_ok = np.all(
            delay_s + self.aggregation_delay_s <= self.delay_budget * (1 + BUDGET_RTOL) + 1e-12,
            axis=-1,
        )
        return energy_ok & delay_ok

    # ---- bounds ------------------------------------------------------------------------------

    def mixture_sums(self, idx: Sequence[int] | IntArray) -> tuple[FloatArray, FloatArray]:
        """Per sample, sum of w_n q_n and of w_n over ``idx`` (the bound's state of a node)."""
        idx = np.asarray(idx, dtype=np.intp)
        return self.weighted_gold[:, idx].sum(axis=1), self.weights[:, idx].sum(axis=1)

    def bound_from_sums(
        self, num: FloatArray, den: FloatArray, forced: BoolArray, undecided: BoolArray
    ) -> float:
        """Lower bound on L(F ∪ U') over every U' ⊆ U with F ∪ U' non-empty (no top_k).

        ``num``/``den`` are the sums of w q and w over F (zeros when F is empty); ``forced`` and
        ``undecided`` are boolean masks over experts. Per sample the mixture of a set is the
        w-weighted average of its q; the largest average reachable from F by adding experts of U
        adds them in decreasing q while that raises the average, i.e. it is the best prefix of U
        in decreasing q. Every reachable set's mixture is at most that, so -log of it (clipped the
        same way as the loss) is at most the set's loss, sample by sample and so on average.
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            if not undecided.any():
                best = num / den
            else:
                prefix = np.cumsum(self._sorted_sums * undecided[self._q_order], axis=2)
                prefix_num = prefix[0] + num[:, None]
                prefix_den = prefix[1] + den[:, None]
                # Before the first expert of U (F empty) the sums are 0: an average of 0 there.
                best = (prefix_num / np.maximum(prefix_den, 1e-300)).max(axis=1)
                if forced.any():
                    best = np.maximum(best, num / den)
        if not self.stable:
            # Weights may have underflowed in these samples: bound by the best single expert.
            reach = forced | undecided
            best = np.where(self.extreme, self.gold[:, reach].max(axis=1), best)
        return float(-np.log(np.maximum(MIN_PROB, best)).mean())

    def lower_bound(
        self, forced: Sequence[int] | IntArray, undecided: Sequence[int] | IntArray
    ) -> float:
        """Lower bound on L(F ∪ U') for every U' ⊆ undecided with F ∪ U' non-empty (no top_k)."""
        f_mask = np.zeros(self.n_experts, dtype=bool)
        u_mask = np.zeros(self.n_experts, dtype=bool)
        f_mask[np.asarray(forced, dtype=np.intp)] = True
        u_mask[np.asarray(undecided, dtype=np.intp)] = True
        u_mask &= ~f_mask
        if not (f_mask.any() or u_mask.any()):
            raise ValueError("the lower bound needs at least one forced or undecided expert")
        num, den = self.mixture_sums(np.flatnonzero(f_mask))
        return self.bound_from_sums(num, den, f_mask, u_mask)

    def topk_cost_bound(self, forced: BoolArray, undecided: BoolArray) -> tuple[float, FloatArray]:
        """Lower bounds on top_k energy and delay over every T with F ⊆ T ⊆ F ∪ U.

        An expert of F among the k highest logits of F ∪ U in a sample is among the k highest of
        every such T, so it runs there whatever else T holds; energies and delays are >= 0. The
        delay is the slowest sure expert per category, without the aggregation delay (as
        ``fits_plain`` takes it).
        """
        assert self.top_k is not None
        reach = (forced | undecided)[self._logit_order]
        rank = np.cumsum(reach, axis=1)
        sure = reach & forced[self._logit_order] & (rank <= self.top_k)
        energy = float((self._energy_by_logit * sure).sum(axis=1).mean())
        runs = np.zeros(self.n_experts, dtype=bool)
        runs[self._logit_order[sure]] = True
        if not runs.any() or not self.categories:
            return energy, np.zeros(len(self.categories))
        return energy, self.delay[runs].max(axis=0)
