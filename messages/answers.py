"""The controller's answer to a prompt."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import (
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
        description="The expert is new to the gate and being profiled, and how far (e.g. "
        "'being profiled: 40/150 prompts, not in the gate yet'); absent otherwise",
    )


class ExpertFailure(Message):
    expert_id: TopicLevel
    agent_id: TopicLevel
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
