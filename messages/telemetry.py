"""Periodic measurements of an agent."""

from __future__ import annotations

from pydantic import Field

from messages.base import EnergySource, Message, NonNegativeFloat, Probability, TopicLevel


class Telemetry(Message):
    agent_id: TopicLevel
    time_s: NonNegativeFloat
    power_w: NonNegativeFloat | None = None
    energy_j: NonNegativeFloat | None = Field(
        default=None, description="Monotonic energy counter since the agent started"
    )
    energy_source: EnergySource | None = None
    cpu_utilisation: Probability | None = None
    memory_used_bytes: int = Field(ge=0)
    process_rss_bytes: int = Field(ge=0)
    temperature_c: float | None = None
    queue_depth: int = Field(ge=0)
    busy: bool
    loaded_experts: list[TopicLevel]
    plan_epoch: int | None = None
    jobs_done: int = Field(ge=0)
    jobs_failed: int = Field(ge=0)
    last_latency_s: NonNegativeFloat | None = None
