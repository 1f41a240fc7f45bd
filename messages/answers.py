"""The controller's answer to a prompt."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import Message, NonNegativeFloat, Probability, TopicLevel
from messages.budgets import Budgets


class ExpertOutput(Message):
    expert_id: TopicLevel
    agent_id: TopicLevel
    weight: Probability
    text: str | None = None
    choice_probs: list[Probability] | None = None
    latency_s: NonNegativeFloat = Field(description="Controller dispatch to result")
    agent_latency_s: NonNegativeFloat = Field(description="Receipt to result on the agent")
    compute_s: NonNegativeFloat = Field(
        description="Time the agent spent on the job (loading and inference, not queueing)"
    )
    completion_tokens: int = Field(ge=0)
    energy_j: NonNegativeFloat | None = None
    energy_source: str | None = None


class ExpertFailure(Message):
    expert_id: TopicLevel
    agent_id: TopicLevel
    reason: str


class Answer(Message):
    request_id: TopicLevel
    status: Literal["ok", "partial", "failed"]
    answer: str | None
    choice_index: int | None = None
    choice_probs: list[Probability] | None = None
    experts: list[ExpertOutput]
    failed: list[ExpertFailure] = Field(default_factory=list)
    error: str | None = None
    latency_s: NonNegativeFloat = Field(description="Controller receipt of the prompt to answer")
    energy_j: NonNegativeFloat | None = Field(
        default=None, description="Sum over experts, only when every one reported energy"
    )
    energy_estimated: bool = Field(
        default=False, description="True when any expert's energy came from a power model"
    )
    budgets: Budgets | None = Field(
        default=None, description="The budgets this prompt was answered under"
    )
