"""What the controller publishes about itself: liveness, the fleet-wide plan, events."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import Message, NonNegativeFloat, TopicLevel


class ControllerStatus(Message):
    state: Literal["online", "offline"]
    version: str
    time_s: NonNegativeFloat
    agents_online: int = Field(ge=0)
    requests_answered: int = Field(ge=0)
    rejected: dict[str, int] = Field(
        default_factory=dict, description="Rejected payloads per topic pattern"
    )


class FleetPlan(Message):
    epoch: int = Field(ge=0)
    time_s: NonNegativeFloat
    assignments: dict[TopicLevel, list[TopicLevel]] = Field(
        description="agent_id -> experts it must hold loaded"
    )


class ControllerEvent(Message):
    time_s: NonNegativeFloat
    kind: Literal[
        "rejected", "agent_online", "agent_offline", "replan", "request_failed", "late_result"
    ]
    topic: str | None = None
    reason: str
    request_id: str | None = None
    agent_id: str | None = None
