"""Retained liveness of an agent; its MQTT will publishes the offline form."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import DurationS, Message, TimestampS, TopicLevel


class AgentStatus(Message):
    agent_id: TopicLevel
    state: Literal["online", "offline"]
    version: str
    time_s: TimestampS
    keepalive_s: int = Field(ge=1, le=65535)
    telemetry_interval_s: DurationS
    reason: str | None = None
    failed_experts: dict[TopicLevel, str] = Field(
        default_factory=dict,
        description="Experts that failed to load, with the error: an agent whose every expert "
        "is here is online but cannot answer",
    )
