"""The compiled half of the subtree scoring (``subtrees.py``): a depth-first walk through each
small subtree in numba, imported only when a search has more subtrees to score than numpy does
quickly (numba's own import and its compiled kernels cost about a second to load, and several
to compile on a machine that has not cached them yet).

The walk: each set's per-sample sums Σ w q and Σ w are its parent's plus one expert's, so one set
costs a few operations per sample, and the loss

    L = −mean_s log max(MIN_PROB, num_s / den_s)

takes one logarithm per set: the ratios (each in [MIN_PROB, 1]) are multiplied together, on
vector registers, and the logarithm taken of the product (when the product is too small to be
exact, in blocks whose running product is folded into the logarithm's sum before it can
underflow). The result differs from the sum of logarithms by rounding only (relative 1e−14).
Divisions follow numpy's rules (``error_model="numpy"``: no zero check, which would keep the loop
off the vector registers).

The kernels are cached on disk by numba (next to this file, else in the user's cache folder);
where no folder can be written they are compiled in memory, each time this module is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from controller.selection.loss import MIN_PROB, BoolArray, FloatArray, IntArray

log = logging.getLogger(__name__)

# A product this small may have lost digits on the way (a double's normal range ends at 2e-308).
_SMALLEST = 1e-280
_BLOCK = 8
# A product of _BLOCK ratios is at least MIN_PROB ** 8 = 1e-96; folding the running product below
# 1e-200 keeps it at least 1e-296, above the smallest normal double.
_FOLD = 1e-200


def _compiled(signature: Any, **options: Any) -> Callable[[Any], Any]:
    """``numba.njit`` with the signature, cached on disk where numba finds a folder it can write
    (else compiled in memory, with a warning: it costs seconds at each start)."""

    def wrap(func: Any) -> Any:
        try:
            return numba.njit(signature, cache=True, **options)(func)
        except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
            if "cannot cache" not in str(exc):
                raise
            log.warning("%s; compiling it in memory (set NUMBA_CACHE_DIR to keep it)", exc)
            return numba.njit(signature, **options)(func)

    return wrap


_F1 = numba.float64[::1]
_F2 = numba.float64[:, ::1]


@_compiled(numba.float64(_F1, _F1, numba.boolean), nogil=True, error_model="numpy")
def _folded_loss(  # pragma: no cover - compiled
    num: FloatArray, den: FloatArray, floor: bool
) -> float:
    """The loss from the sums, the running product folded into the logarithm's sum whenever it
    falls below ``_FOLD`` (a product of ``_BLOCK`` ratios is at least MIN_PROB ** _BLOCK)."""
    n = num.shape[0]
    acc = 0.0
    running = 1.0
    for start in range(0, n, _BLOCK):
        block = 1.0
        for s in range(start, min(start + _BLOCK, n)):
            r = num[s] / den[s]
            if floor:
                r = max(r, MIN_PROB)
            block *= r
        running *= block
        if running < _FOLD:
            acc += np.log(running)
            running = 1.0
    acc += np.log(running)
    return -acc / n


@_compiled(
    numba.float64(_F1, _F1, _F1, _F1, _F1, _F1, numba.boolean),
    nogil=True,
    fastmath={"reassoc", "nsz"},
    error_model="numpy",
)
def _loss_and_sums(  # pragma: no cover - compiled
    num: FloatArray,
    den: FloatArray,
    x: FloatArray,
    w: FloatArray,
    out_num: FloatArray,
    out_den: FloatArray,
    floor: bool,
) -> float:
    """The loss of the set whose sums are (num + x, den + w), written to (out_num, out_den).

    The ratios are multiplied in any order (``reassoc``: the loop runs on vector registers);
    each is at most 1, so every partial product is at least the whole one, and when that is at
    least ``_SMALLEST`` nothing underflowed. Otherwise the product is taken again in blocks.
    """
    n = num.shape[0]
    product = 1.0
    for s in range(n):
        a = num[s] + x[s]
        b = den[s] + w[s]
        out_num[s] = a
        out_den[s] = b
        r = a / b
        if floor:
            r = max(r, MIN_PROB)
        product *= r
    if product >= _SMALLEST:
        return -np.log(product) / n
    return _folded_loss(out_num, out_den, floor)


@_compiled(
    numba.types.Tuple((numba.int64, numba.int64, numba.int64, numba.boolean))(
        _F2,
        _F2,
        _F2,
        _F2,
        _F1,
        numba.boolean[:, ::1],
        numba.int64[::1],
        _F1,
        _F1,
        numba.float64,
        numba.boolean,
        numba.float64,
        numba.float64,
        numba.float64,
        numba.int64[:, ::1],
        numba.int64[::1],
        _F1,
    ),
    nogil=True,
    error_model="numpy",
)
def walk(  # pragma: no cover - compiled
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
    out_sets: IntArray,
    out_sizes: IntArray,
    out_losses: FloatArray,
) -> tuple[int, int, int, bool]:
    n_samples = x.shape[1]
    depth_max = rest.shape[1] + 1
    nums = np.empty((depth_max, n_samples))
    dens = np.empty((depth_max, n_samples))
    losses = np.empty(depth_max)
    energies = np.empty(depth_max)
    path = np.empty(depth_max, dtype=np.int64)
    nxt = np.empty(depth_max, dtype=np.int64)
    pos = np.empty(rest.shape[1], dtype=np.int64)
    scored = 0
    violations = 0
    n_out = 0
    complete = True
    for g in range(rest.shape[0]):
        n_pos = 0
        for c in range(rest.shape[1]):
            if rest[g, c]:
                pos[n_pos] = c
                n_pos += 1
        nums[0, :] = child_num[g]
        dens[0, :] = child_den[g]
        losses[0] = child_loss[g]
        energies[0] = child_energy[g]
        path[0] = child_pos[g]
        nxt[0] = 0
        d = 0
        while d >= 0:
            i = nxt[d]
            if i >= n_pos:
                d -= 1
                continue
            nxt[d] = i + 1
            v = pos[i]
            e = energies[d] + energy[v]
            if e > limit_j:
                continue
            loss = _loss_and_sums(nums[d], dens[d], x[v], w[v], nums[d + 1], dens[d + 1], floor)
            scored += 1
            if loss > losses[d] + tie_tol:
                violations += 1
            if loss <= threshold:
                threshold = min(threshold, loss + recheck)
                if n_out == out_losses.shape[0]:  # full: keep only those still near the best
                    kept = 0
                    for r in range(n_out):
                        if out_losses[r] <= threshold:
                            out_sets[kept] = out_sets[r]
                            out_sizes[kept] = out_sizes[r]
                            out_losses[kept] = out_losses[r]
                            kept += 1
                    n_out = kept
                if n_out < out_losses.shape[0]:
                    out_sets[n_out, : d + 1] = path[: d + 1]
                    out_sets[n_out, d + 1] = v
                    out_sizes[n_out] = d + 2
                    out_losses[n_out] = loss
                    n_out += 1
                else:
                    complete = False
            d += 1
            path[d] = v
            losses[d] = loss
            energies[d] = e
            nxt[d] = i + 1
    return scored, violations, n_out, complete
