"""The controller's answer to a prompt."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import (
    MAX_TOTAL_ENERGY_J,
    DurationS,
    EnergyJ,
    Message,
    Probability,
    TokenCount,
    TopicLevel,
    TotalEnergyJ,
)
from messages.budgets import Budgets


class ExpertOutput(Message):
    expert_id: TopicLevel
    agent_id: TopicLevel
    weight: Probability
    text: str | None = None
    choice_probs: list[Probability] | None = None
    latency_s: DurationS = Field(description="Controller dispatch to result")
    agent_latency_s: DurationS = Field(description="Receipt to result on the agent")
    compute_s: DurationS = Field(
        description="Time the agent spent on the job (loading and inference, not queueing)"
    )
    completion_tokens: TokenCount
    prompt_tokens: TokenCount = Field(default=0, description="Tokens of the prompt as rendered")
    energy_j: EnergyJ | None = None
    energy_source: str | None = None
    profiling: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,  # absent, not null: an answer of many experts
        description="The expert is new to the gate and being profiled, and how far (e.g. "
        "'being profiled: 40/150 prompts, not in the gate yet'); absent otherwise",
    )


class ExpertFailure(Message):
    expert_id: TopicLevel
    agent_id: TopicLevel
    reason: str


class BudgetOverrun(Message):
    """One budget an answer ran over. A budget bounds the expected cost per query (the plan is
    solved with each expert's costs as learnt from results: measured where a sensor reports,
    estimated from a power model otherwise), not every answer: one that costs more is answered
    all the same, and says so here."""

    budget: Literal["energy", "delay"]
    category: str | None = Field(default=None, description="With delay: the prompt's category")
    limit: float = Field(
        ge=0,
        le=MAX_TOTAL_ENERGY_J,
        allow_inf_nan=False,
        description="The budget: J per query, or s for the category",
    )
    spent: float = Field(
        ge=0,
        le=MAX_TOTAL_ENERGY_J,
        allow_inf_nan=False,
        description="What this answer took: J, or s from receipt to answer",
    )
    reason: str


class Answer(Message):
    request_id: TopicLevel
    status: Literal["ok", "partial", "failed", "busy", "rejected"] = Field(
        description="ok: every expert asked counted (or the outcome was decided without the "
        "rest, see left_out); partial: some failed; failed: none answered; busy: the fleet's "
        "queue is full, retry after retry_after_s; rejected: the prompt itself was refused"
    )
    answer: str | None
    choice_index: int | None = Field(default=None, ge=0, le=25)
    choice_probs: list[Probability] | None = None
    experts: list[ExpertOutput]
    failed: list[ExpertFailure] = Field(default_factory=list)
    left_out: list[ExpertFailure] = Field(
        default_factory=list,
        description="Experts not waited for: the outcome was decided without them",
    )
    error: str | None = None
    retry_after_s: DurationS | None = Field(default=None, description="With busy: when to retry")
    latency_s: DurationS = Field(description="Controller receipt of the prompt to answer")
    energy_j: TotalEnergyJ | None = Field(
        default=None, description="Sum over experts, only when every one reported energy"
    )
    energy_estimated: bool = Field(
        default=False, description="True when any expert's energy came from a power model"
    )
    budgets: Budgets | None = Field(
        default=None, description="The budgets this prompt was answered under"
    )
    over_budget: list[BudgetOverrun] = Field(
        default_factory=list,
        description="The budgets this answer ran over (late: its delay; or its energy). A "
        "budget plans the expected cost per query; an answer over it is still given, marked",
    )
