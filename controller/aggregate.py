"""Combining the experts' results into one answer (DESIGN.md section 3, the ensemble)."""

from __future__ import annotations

from dataclasses import dataclass

from messages.answers import ExpertFailure, ExpertOutput
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
    keys = [f"{a.result.expert_id}@{a.result.agent_id}" for a in ok]
    raw = weights or uniform_weights(keys)
    total = sum(raw.get(k, 0.0) for k in keys)
    norm = {k: (raw.get(k, 0.0) / total if total > 0 else 1.0 / len(keys)) for k in keys}
    outputs = [
        ExpertOutput(
            expert_id=a.result.expert_id,
            agent_id=a.result.agent_id,
            weight=norm[k],
            text=a.result.text,
            choice_probs=a.result.choice_probs,
            latency_s=a.latency_s,
            agent_latency_s=a.result.latency.total_s,
            compute_s=max(0.0, a.result.latency.total_s - a.result.latency.queue_s),
            completion_tokens=a.result.completion_tokens,
            energy_j=a.result.energy.energy_j if a.result.energy else None,
            energy_source=a.result.energy.source if a.result.energy else None,
        )
        for a, k in zip(ok, keys, strict=True)
    ]
    energies = [o.energy_j for o in outputs]
    energy_j = sum(energies) if outputs and all(e is not None for e in energies) else None  # type: ignore[misc]
    if not outputs:
        return Combined(None, None, None, [], failed, None)
    if choices is not None:
        mixture = [
            sum(o.weight * (o.choice_probs or [])[i] for o in outputs) for i in range(len(choices))
        ]
        total_p = sum(mixture)
        mixture = [p / total_p for p in mixture]
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
