"""Activation plan for one agent: the experts it must hold loaded."""

from __future__ import annotations

from pydantic import Field

from messages.base import Message, PlanEpoch, TimestampS, TopicLevel


class ActivationPlan(Message):
    """An agent applies a plan whose epoch is above its current one, or any plan from another
    controller incarnation than the one it holds (a takeover or a restart), so no epoch, however
    large, can wedge it."""

    agent_id: TopicLevel
    epoch: PlanEpoch = Field(description="Plans with an older epoch than the agent's are ignored")
    experts: list[TopicLevel] = Field(description="Load exactly these; unload every other expert")
    time_s: TimestampS
    controller_id: TopicLevel | None = Field(default=None, description="Who made the plan")
    incarnation: PlanEpoch | None = Field(
        default=None, description="The making controller's incarnation (its start time, ms)"
    )
