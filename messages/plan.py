"""Activation plan for one agent: the experts it must hold loaded."""

from __future__ import annotations

from pydantic import Field

from messages.base import Message, NonNegativeFloat, TopicLevel


class ActivationPlan(Message):
    agent_id: TopicLevel
    epoch: int = Field(ge=0, description="Plans with an older epoch than the agent's are ignored")
    experts: list[TopicLevel] = Field(description="Load exactly these; unload every other expert")
    time_s: NonNegativeFloat
