"""The scoring of small subtrees (controller/selection/subtrees.py), by both kernels (numpy, and
the compiled one of subtrees_compiled.py): every set that fits scored with its loss by the
definition, the violations counted against each set's parent, the sets near the best returned
however many tie, and products too small for one logarithm; both kernels return the same."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from controller.selection import subtrees
from controller.selection.subtrees import score_subtrees

MIN_PROB = 1e-12


def _loss(gold: np.ndarray, weights: np.ndarray, members: list[int]) -> float:
    mix = (weights[:, members] * gold[:, members]).sum(axis=1) / weights[:, members].sum(axis=1)
    return float(-np.log(np.maximum(MIN_PROB, mix)).mean())


def _node(rng: np.random.Generator, n_samples: int, n_cands: int, tiny: bool = False):
    """Forced experts F = {0, 1}, candidates 2 .. 2 + n_cands - 1 with random energies."""
    n = 2 + n_cands
    gold = rng.random((n_samples, n))
    if tiny:  # mixtures near 1e-3 in every sample: the product of 250 of them underflows
        gold = 1e-3 * (0.5 + gold)
    else:
        gold[rng.random(gold.shape) < 0.2] = 1e-14  # below the floor
    weights = np.exp(rng.normal(0.0, 2.0, (n_samples, n)))
    energy = rng.uniform(0.5, 3.0, n)
    return gold, weights, energy


KERNELS = ["numpy", "compiled"]


def _run(
    gold,
    weights,
    energy,
    rest,
    limit_j,
    *,
    threshold=np.inf,
    recheck=np.inf,
    floor=True,
    kernel="compiled",
):
    forced = [0, 1]
    cands = np.arange(2, gold.shape[1])
    wq = weights * gold
    x, w = wq[:, cands].T, weights[:, cands].T
    num = wq[:, forced].sum(axis=1)[None, :] + x  # the children F + {u}
    den = weights[:, forced].sum(axis=1)[None, :] + w
    child_energy = energy[forced].sum() + energy[cands]
    child_loss = np.array([_loss(gold, weights, [*forced, int(u)]) for u in cands])
    rows = np.flatnonzero(rest.any(axis=1))
    out = score_subtrees(
        num[rows],
        den[rows],
        x,
        w,
        energy[cands],
        rest[rows],
        rows,
        child_energy[rows],
        child_loss[rows],
        limit_j=limit_j,
        floor=floor,
        threshold=threshold,
        recheck=recheck,
        tie_tol=1e-12,
        kernel=kernel,
    )
    return out, cands, child_loss


def _expected(gold, weights, energy, rest, limit_j, child_loss):
    """Every set F + {u_j} + V by brute force: members (candidate positions) -> (loss, parent)."""
    want: dict[tuple[int, ...], tuple[float, float]] = {}
    for j in range(rest.shape[0]):
        pos = [int(p) for p in np.flatnonzero(rest[j])]
        for size in range(1, len(pos) + 1):
            for chosen in itertools.combinations(pos, size):
                members = [0, 1, 2 + j, *(2 + p for p in chosen)]
                if energy[members].sum() > limit_j:
                    continue
                parent = (j, *chosen[:-1])
                parent_loss = want[parent][0] if len(parent) > 1 else child_loss[j]
                want[(j, *chosen)] = (_loss(gold, weights, members), parent_loss)
    return want


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("n_samples", "tiny"), [(1, False), (17, False), (250, False), (250, True)]
)
def test_every_set_that_fits_is_scored_with_its_loss(
    n_samples: int, tiny: bool, kernel: str
) -> None:
    rng = np.random.default_rng(n_samples + tiny)
    n_cands = 9
    gold, weights, energy = _node(rng, n_samples, n_cands, tiny=tiny)
    # each child's candidates: a random subset of the later ones; some children have none
    rest = np.triu(rng.random((n_cands, n_cands)) < 0.7, k=1)
    limit_j = energy[:2].sum() + 6.0  # some sets do not fit
    out, _, child_loss = _run(gold, weights, energy, rest, limit_j, kernel=kernel)
    want = _expected(gold, weights, energy, rest, limit_j, child_loss)
    assert 0 < len(want) < sum(2 ** int(r.sum()) - 1 for r in rest)  # the budget ruled some out
    got = {
        tuple(int(p) for p in row[:size]): loss for row, size, loss in zip(*out[2:], strict=True)
    }
    assert out.scored == len(want)
    assert set(got) == set(want)  # with an infinite threshold, every set comes back
    for key, (loss, _) in want.items():
        assert got[key] == pytest.approx(loss, rel=1e-12, abs=1e-13), key
    assert out.violations == sum(1 for loss, parent in want.values() if loss > parent + 1e-12)
    if tiny:
        assert max(want.values())[0] > 6.0  # mixtures near 1e-3: a product of 1e-750


@pytest.mark.parametrize("kernel", KERNELS)
def test_only_sets_near_the_best_come_back(kernel: str) -> None:
    rng = np.random.default_rng(7)
    gold, weights, energy = _node(rng, 50, 8)
    rest = np.triu(np.ones((8, 8), dtype=bool), k=1)
    limit_j = 1e9
    out, _, child_loss = _run(
        gold, weights, energy, rest, limit_j, threshold=np.inf, recheck=1e-9, kernel=kernel
    )
    want = _expected(gold, weights, energy, rest, limit_j, child_loss)
    best = min(loss for loss, _ in want.values())
    assert min(out.losses) == pytest.approx(best, rel=1e-12)
    # what came back: the best, and sets within 1e-9 of the lowest loss seen when each was found
    assert all(got <= best + 1.0 for got in out.losses) and len(out.losses) < len(want)
    # a threshold below every loss returns nothing, and still scores every set
    none, _, _ = _run(
        gold, weights, energy, rest, limit_j, threshold=best - 0.01, recheck=1e-9, kernel=kernel
    )
    assert none.scored == len(want) and len(none.losses) == 0


def test_more_ties_than_the_buffer_holds_all_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Identical experts: every set has the same loss; none may be lost to the buffer's size."""
    monkeypatch.setattr(subtrees, "_OUT_ROWS", 16)
    rng = np.random.default_rng(3)
    n_cands = 8
    gold, weights, energy = _node(rng, 30, n_cands)
    gold[:] = gold[:, :1]
    weights[:] = weights[:, :1]
    rest = np.triu(np.ones((n_cands, n_cands), dtype=bool), k=1)
    out, _, child_loss = _run(gold, weights, energy, rest, 1e9, threshold=np.inf, recheck=1e-9)
    want = _expected(gold, weights, energy, rest, 1e9, child_loss)
    assert len(want) == out.scored == 2**n_cands - 1 - n_cands  # every set beyond the children
    assert len(out.losses) == len(want) > 16


@pytest.mark.parametrize("seed", range(6))
def test_both_kernels_return_the_same_sets_losses_and_counts(seed: int) -> None:
    """numpy and the compiled walk: the same sets near the best in the same (depth-first)
    order, the same counts, losses equal up to rounding, under a finite threshold and recheck."""
    rng = np.random.default_rng(100 + seed)
    n_cands = 7 + seed % 3
    gold, weights, energy = _node(rng, 40 + 30 * seed, n_cands, tiny=seed == 5)
    rest = np.triu(rng.random((n_cands, n_cands)) < 0.8, k=1)
    limit_j = energy[:2].sum() + 4.0 + seed
    runs = {
        kernel: _run(
            gold, weights, energy, rest, limit_j, threshold=np.inf, recheck=0.05, kernel=kernel
        )[0]
        for kernel in KERNELS
    }
    fast, compiled = runs["numpy"], runs["compiled"]
    assert fast.scored == compiled.scored > 0
    assert fast.violations == compiled.violations
    assert fast.sizes.tolist() == compiled.sizes.tolist()
    assert [r[:n].tolist() for r, n in zip(fast.sets, fast.sizes, strict=True)] == [
        r[:n].tolist() for r, n in zip(compiled.sets, compiled.sizes, strict=True)
    ]
    np.testing.assert_allclose(fast.losses, compiled.losses, rtol=1e-12, atol=1e-13)


def test_auto_starts_with_numpy_and_loads_the_compiled_walk_past_its_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The "auto" kernel scores a small call in numpy and counts the work; past ``NUMPY_WORK``
    it loads the compiled walk in the background, and uses it once loaded."""
    fresh = subtrees._Compiled()
    monkeypatch.setattr(subtrees, "COMPILED", fresh)
    monkeypatch.setattr(subtrees, "NUMPY_WORK", 1000)
    rng = np.random.default_rng(11)
    gold, weights, energy = _node(rng, 30, 6)
    rest = np.triu(np.ones((6, 6), dtype=bool), k=1)
    first, _, _ = _run(gold, weights, energy, rest, 1e9, kernel="auto")
    assert fresh.numpy_work == first.scored * 30 > 1000
    assert fresh._loader is not None
    fresh._loader.join(timeout=600)
    assert fresh.walk is not None
    again, _, _ = _run(gold, weights, energy, rest, 1e9, kernel="auto")
    assert fresh.numpy_work == first.scored * 30  # compiled now: nothing more counted
    assert again.scored == first.scored
