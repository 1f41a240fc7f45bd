"""Combining the experts' results into one answer (docs/design.md section 3, the ensemble), when
what is still out can no longer change it, and which budgets the answer ran over."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from messages.answers import BudgetOverrun, ExpertFailure, ExpertOutput
from messages.base import MAX_SECONDS, MAX_TOTAL_ENERGY_J
from messages.budgets import Budgets
from messages.expert_key import expert_key
from messages.results import JobResult


@dataclass(frozen=True)
class Arrival:
    """A result as received by the controller."""

    result: JobResult
    latency_s: float  # controller dispatch to receipt


@dataclass(frozen=True)
class Combined:
    answer: str | None
    choice_index: int | None
    choice_probs: list[float] | None
    experts: list[ExpertOutput]
    failed: list[ExpertFailure]
    energy_j: float | None


def uniform_weights(keys: list[str]) -> dict[str, float]:
    return {k: 1.0 / len(keys) for k in keys} if keys else {}


def _finite_sum(values: list[float]) -> float:
    """The exact sum, or inf where it overflows (``math.fsum`` raises there)."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.inf


def _bounded(value: float, high: float) -> float:
    """``value`` within [0, high]; NaN counts as 0. For figures the controller measures itself."""
    return min(max(value, 0.0), high) if value == value else 0.0


def normalised_weights(keys: list[str], raw: dict[str, float]) -> dict[str, float]:
    """``raw`` renormalised over ``keys``; a missing, negative or non-finite weight counts as 0,
    and uniform weights stand in when nothing positive remains."""
    clean = {k: w if math.isfinite(w := raw.get(k, 0.0)) and w > 0 else 0.0 for k in keys}
    total = _finite_sum(list(clean.values()))
    if not (math.isfinite(total) and total > 0):
        return uniform_weights(keys)
    return {k: min(1.0, w / total) for k, w in clean.items()}


def total_energy(energies: list[float | None]) -> float | None:
    """The sum of every expert's energy, or None when any is missing (or there is none).

    Each reading is finite and bounded by the message contract, so ``fsum`` cannot overflow;
    the sum is capped at the answer's bound (only reachable with over a thousand experts at
    the largest energy a result may report), so building the answer never fails on it.
    """
    if not energies or any(e is None for e in energies):
        return None
    total = _finite_sum([e for e in energies if e is not None])
    return min(total, MAX_TOTAL_ENERGY_J) if math.isfinite(total) else MAX_TOTAL_ENERGY_J


def combine(
    choices: list[str] | None,
    arrivals: list[Arrival],
    missing: list[ExpertFailure],
    weights: dict[str, float] | None = None,
) -> Combined:
    """Mixture of choice distributions, or the highest-weighted non-empty text (earliest wins ties).

    ``weights`` maps ``expert@agent`` to a raw weight; they are renormalised over the experts
    that succeeded. Failed experts are left out and listed with their reason.
    """
    ok = [a for a in arrivals if a.result.ok]
    failed = list(missing) + [
        ExpertFailure(
            expert_id=a.result.expert_id,
            agent_id=a.result.agent_id,
            reason=a.result.error or "failed",
        )
        for a in arrivals
        if not a.result.ok
    ]
    if choices is not None:
        wrong = [
            a
            for a in ok
            if a.result.choice_probs is None or len(a.result.choice_probs) != len(choices)
        ]
        for a in wrong:
            failed.append(
                ExpertFailure(
                    expert_id=a.result.expert_id,
                    agent_id=a.result.agent_id,
                    reason=f"expected {len(choices)} choice probabilities",
                )
            )
        ok = [a for a in ok if a not in wrong]
    else:
        textless = [a for a in ok if a.result.text is None]
        failed.extend(
            ExpertFailure(
                expert_id=a.result.expert_id,
                agent_id=a.result.agent_id,
                reason="result carries no text for a free-text prompt",
            )
            for a in textless
        )
        ok = [a for a in ok if a.result.text is not None]
    keys = [expert_key(a.result.agent_id, a.result.expert_id) for a in ok]
    norm = normalised_weights(keys, weights) if weights else uniform_weights(keys)
    outputs = [
        ExpertOutput(
            expert_id=a.result.expert_id,
            agent_id=a.result.agent_id,
            weight=norm[k],
            text=a.result.text,
            choice_probs=a.result.choice_probs,
            latency_s=_bounded(a.latency_s, MAX_SECONDS),
            agent_latency_s=a.result.latency.total_s,
            compute_s=_bounded(a.result.latency.total_s - a.result.latency.queue_s, MAX_SECONDS),
            completion_tokens=a.result.completion_tokens,
            prompt_tokens=a.result.prompt_tokens,
            energy_j=a.result.energy.energy_j if a.result.energy else None,
            energy_source=a.result.energy.source if a.result.energy else None,
        )
        for a, k in zip(ok, keys, strict=True)
    ]
    energy_j = total_energy([o.energy_j for o in outputs])
    if not outputs:
        return Combined(None, None, None, [], failed, None)
    if choices is not None:
        mixture = [
            sum(o.weight * (o.choice_probs or [])[i] for o in outputs) for i in range(len(choices))
        ]
        total_p = math.fsum(mixture)
        if total_p > 0:
            mixture = [min(1.0, p / total_p) for p in mixture]
        else:
            mixture = [1.0 / len(choices)] * len(choices)
        best = max(range(len(choices)), key=lambda i: mixture[i])
        return Combined(choices[best], best, mixture, outputs, failed, energy_j)
    # An empty generation never wins over a real one; then weight, then the earliest arrival.
    order = sorted(
        range(len(outputs)),
        key=lambda i: (
            not (outputs[i].text or "").strip(),
            -outputs[i].weight,
            outputs[i].latency_s,
        ),
    )
    return Combined(outputs[order[0]].text, None, None, outputs, failed, energy_j)


# The leading choice must beat the runner-up by more than the weight still out, plus this.
MARGIN = 1e-9


def _usable(result: JobResult, choices: list[str] | None) -> bool:
    if not result.ok:
        return False
    if choices is not None:
        return result.choice_probs is not None and len(result.choice_probs) == len(choices)
    return bool((result.text or "").strip())


def decided(
    choices: list[str] | None,
    arrived: Mapping[str, JobResult],
    outstanding: Iterable[str],
    weights: Mapping[str, float] | None,
) -> bool:
    """Whether the experts still out (by key) can no longer change the answer.

    Choices: the mixture so far (each arrived expert's probabilities times its weight among
    every expert that can still count) leads by more than the outstanding experts' total
    weight, so whatever they say, the winning choice stays. Free text: an arrived non-empty
    text weighs at least as much as any expert still out (ties go to the earlier answer).
    With nothing out the answer is complete, hence decided.
    """
    out = list(outstanding)
    if not out:
        return True
    usable = [k for k, r in arrived.items() if _usable(r, choices)]
    if not usable:
        return False
    live = usable + out
    norm = normalised_weights(live, dict(weights)) if weights else uniform_weights(live)
    if choices is None:
        return max(norm[k] for k in usable) >= max(norm[k] for k in out)
    mixture = [
        sum(norm[k] * (arrived[k].choice_probs or [])[i] for k in usable)
        for i in range(len(choices))
    ]
    ranked = sorted(mixture, reverse=True)
    return ranked[0] - ranked[1] > sum(norm[k] for k in out) + MARGIN


def combined_if_decided(
    choices: list[str] | None,
    arrivals: Mapping[str, Arrival],
    outstanding: list[str],
    missing: list[ExpertFailure],
    weights: dict[str, float] | None,
) -> Combined | None:
    """The answer once the experts still out (by key) can no longer change it, else None:
    ``decided``, then ``combine`` of what arrived (``missing``: the experts already lost)."""
    if not decided(choices, {k: a.result for k, a in arrivals.items()}, outstanding, weights):
        return None
    return combine(choices, list(arrivals.values()), missing, weights=weights)


def over_budget(
    budgets: Budgets | None,
    category: str | None,
    latency_s: float,
    energy_j: float | None,
) -> list[BudgetOverrun]:
    """The budgets an answer ran over: its delay (receipt to answer) over its category's delay
    budget, its energy (every expert's, when each reported one) over the energy budget. A
    budget bounds the expected cost per query the plan was solved for, so one answer may run
    over it: it is given all the same, marked late. Without budgets, or a category the delay
    budgets name, nothing to say."""
    if budgets is None:
        return []
    over = []
    limit = budgets.delay_s.get(category) if category is not None else None
    if limit is not None and latency_s > limit:
        over.append(
            BudgetOverrun(
                budget="delay",
                category=category,
                limit=limit,
                spent=latency_s,
                reason=f"late: answered in {latency_s:.3g} s, over the {category} delay budget "
                f"of {limit:g} s (the plan's expected delay per query)",
            )
        )
    if budgets.energy_j is not None and energy_j is not None and energy_j > budgets.energy_j:
        over.append(
            BudgetOverrun(
                budget="energy",
                limit=budgets.energy_j,
                spent=energy_j,
                reason=f"spent {energy_j:.3g} J, over the energy budget of {budgets.energy_j:g} J "
                "per query (the plan's expected energy per query)",
            )
        )
    return over
