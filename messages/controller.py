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
    algorithm: str = Field(default="all", description="How the active set was chosen")
    loss: float | None = Field(default=None, description="Validation loss of the chosen set")
    energy_j: NonNegativeFloat | None = Field(
        default=None, description="Expected energy per query of the chosen set"
    )
    delay_s: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="Expected delay per category of the chosen set"
    )
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
