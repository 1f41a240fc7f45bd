"""What the controller believes each expert costs now, next to the budgets in force: the
retained ``controller/costs`` (``moe2 costs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import (
    Count,
    DurationS,
    EnergyJ,
    FiniteFloat,
    Message,
    TimestampS,
    TopicLevel,
)
from messages.budgets import Budgets


class ExpertCostRow(Message):
    key: TopicLevel = Field(description="expert@agent")
    online: bool
    planned: bool = Field(description="Active in the plan in force")
    in_gate: bool = Field(description="Known to the gate (else: not yet profiled)")
    energy_j: EnergyJ | None = Field(default=None, description="Energy per query now, J")
    energy_estimated: bool = Field(
        default=True, description="From a power model, not a sensor (or seeded from one)"
    )
    energy_source: str | None = Field(default=None, description="Source of the live samples")
    delay_s: dict[str, DurationS] = Field(default_factory=dict, description="Per category, s")
    origin: Literal["profile", "live", "unknown"] = Field(
        description="profile: no live samples yet; live: learnt from results"
    )
    delay_samples: Count = 0
    energy_samples: Count = 0
    delay_ratio: FiniteFloat = Field(default=1.0, description="Current delay / profiled delay")
    energy_ratio: FiniteFloat = Field(default=1.0, description="Current energy / profiled")
    profiling: str | None = Field(
        default=None, description="Progress of profiling a newcomer, e.g. '12/40 prompts'"
    )
    profiled: Count | None = Field(
        default=None, description="A newcomer: suite prompts measured (or failed) so far"
    )
    profile_of: Count | None = Field(
        default=None,
        description="A newcomer: prompts it is profiled on before it enters the gate (a "
        "stratified sample of the suite), or, once in the gate, the whole suite it is refined on",
    )


class CostTable(Message):
    controller_id: TopicLevel
    time_s: TimestampS
    budgets: Budgets
    feasible: bool = Field(description="Whether some set of online experts fits the budgets")
    problem: str | None = Field(
        default=None, description="Why nothing fits: each expert's cost against the budget"
    )
    drift_threshold: FiniteFloat = Field(description="Relative change that re-plans")
    window: Count = Field(description="Samples in each rolling median")
    experts: list[ExpertCostRow]
