"""The MoE² selection instance (docs/design.md section 6): experts, budgets, measured samples.

Everything a solver needs is in one JSON object, so a user can hand the solver an instance without
a running fleet. Validation is strict: unknown fields, non-finite or negative costs and budgets,
missing delay categories, duplicate ids, probability rows that are not distributions and every
shape mismatch are refused with a message that says where.

A row of choice probabilities that sums to 1 within ``PROB_SUM_TOL`` is a distribution written
with rounded numbers (another tool's six or three decimals): it is accepted and renormalised to
sum to 1 exactly. A row further off (logits, percentages, a dropped choice) is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.instance_json import MAX_LISTED_ERRORS, join_problems, load_model, parse_model

# How far a row of choice probabilities may sum from 1 and still be taken for a distribution
# written with rounded numbers (then renormalised): rows rounded to three decimals, such as
# [0.333, 0.333, 0.333], are the coarsest accepted.
PROB_SUM_TOL = 1e-3

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class SelectionInstanceError(ValueError):
    """A selection instance that cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SelectionExpert(_Model):
    """One expert: its energy per query and its delay per application category."""

    id: str = Field(min_length=1, max_length=256)
    energy_j: NonNegativeFloat = Field(description="Measured energy per query (J)")
    delay_s: dict[str, NonNegativeFloat] = Field(
        description="Delay per category: compute + transmission (s)"
    )


class SelectionBudgets(_Model):
    """Energy per query and per-category delay that the chosen set must respect."""

    energy_j: NonNegativeFloat
    delay_s: dict[str, NonNegativeFloat] = Field(default_factory=dict)


class SelectionSamples(_Model):
    """Measured outputs: gold labels, per-expert choice distributions and gate logits."""

    labels: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    choice_probs: list[list[list[FiniteFloat]]] = Field(
        description="[sample][expert][choice]; the choice count may differ between samples"
    )
    gate_logits: list[list[FiniteFloat]] = Field(description="[sample][expert]")

    @field_validator("choice_probs")
    @classmethod
    def _renormalise(cls, probs: list[list[list[float]]]) -> list[list[list[float]]]:
        """Rows within PROB_SUM_TOL of 1 are scaled to sum to 1; the instance's own check then
        refuses the rest with their original sums."""
        return [[renormalised(row) for row in sample] for sample in probs]


class SelectionInstance(_Model):
    """A MoE² expert-selection problem (docs/design.md sections 3 and 6)."""

    experts: list[SelectionExpert] = Field(min_length=1)
    budgets: SelectionBudgets
    aggregation_delay_s: NonNegativeFloat = 0.0
    top_k: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Experts of S run per prompt (by gate logit); null: all of S"
    )
    samples: SelectionSamples

    @model_validator(mode="after")
    def _consistent(self) -> SelectionInstance:
        problems: list[str] = []
        seen: set[str] = set()
        for n, expert in enumerate(self.experts):
            if expert.id in seen:
                problems.append(f"experts[{n}]: duplicate expert id {expert.id!r}")
            seen.add(expert.id)
            missing = [c for c in self.budgets.delay_s if c not in expert.delay_s]
            if missing:
                problems.append(
                    f"experts[{n}] ({expert.id!r}): no delay_s for budget "
                    f"categor{'y' if len(missing) == 1 else 'ies'} {', '.join(map(repr, missing))}"
                )
        problems.extend(self._sample_problems())
        if problems:
            raise ValueError(join_problems(problems))
        return self

    def _sample_problems(self) -> list[str]:
        n_experts = len(self.experts)
        samples = self.samples
        n_samples = len(samples.labels)
        problems: list[str] = []
        for name, rows in (
            ("choice_probs", samples.choice_probs),
            ("gate_logits", samples.gate_logits),
        ):
            if len(rows) != n_samples:
                problems.append(f"samples.{name}: {len(rows)} samples, but labels has {n_samples}")
        if problems:
            return problems
        for s, (label, probs, logits) in enumerate(
            zip(samples.labels, samples.choice_probs, samples.gate_logits, strict=True)
        ):
            if len(logits) != n_experts:
                problems.append(
                    f"samples.gate_logits[{s}]: {len(logits)} logits for {n_experts} experts"
                )
            if len(probs) != n_experts:
                problems.append(
                    f"samples.choice_probs[{s}]: {len(probs)} rows for {n_experts} experts"
                )
                continue
            n_choices = len(probs[0])
            if n_choices == 0:
                problems.append(f"samples.choice_probs[{s}][0]: no choices")
                continue
            if label >= n_choices:
                problems.append(
                    f"samples.labels[{s}]: label {label} out of range for {n_choices} choices"
                )
            for n, row in enumerate(probs):
                where = f"samples.choice_probs[{s}][{n}]"
                if len(row) != n_choices:
                    problems.append(
                        f"{where}: {len(row)} choices, but expert 0 has {n_choices} in this sample"
                    )
                elif min(row) < 0:
                    problems.append(f"{where}: negative probability {min(row)}")
                elif not math.isclose(math.fsum(row), 1.0, rel_tol=0, abs_tol=PROB_SUM_TOL):
                    problems.append(
                        f"{where}: probabilities sum to {math.fsum(row):.9g}, not 1 "
                        f"(tolerance {PROB_SUM_TOL:g})"
                    )
            if len(problems) > MAX_LISTED_ERRORS:
                break
        return problems

    @property
    def categories(self) -> list[str]:
        """The delay categories under a budget, in the order of ``budgets.delay_s``."""
        return list(self.budgets.delay_s)


def renormalised(row: list[float]) -> list[float]:
    """``row`` scaled to sum to 1 when it is a distribution up to rounding, else unchanged."""
    total = math.fsum(row)
    if row and min(row) >= 0 and total > 0 and abs(total - 1.0) <= PROB_SUM_TOL:
        return [p / total for p in row]
    return row


def parse_instance(data: str | bytes | dict[str, Any]) -> SelectionInstance:
    """Validate a JSON text or an already decoded object; raises SelectionInstanceError."""
    return parse_model(SelectionInstance, data, SelectionInstanceError, "selection instance")


def load_instance(path: Path | str) -> SelectionInstance:
    """Read and validate a selection instance from a JSON file; raises SelectionInstanceError."""
    return load_model(SelectionInstance, path, SelectionInstanceError, "selection instance")
