"""Periodic measurements of an agent."""

from __future__ import annotations

from pydantic import Field

from messages.base import (
    ByteCount,
    Celsius,
    Count,
    DurationS,
    EnergySource,
    Message,
    PlanEpoch,
    PowerW,
    Probability,
    Term,
    TimestampS,
    TopicLevel,
    TotalEnergyJ,
)


class Telemetry(Message):
    agent_id: TopicLevel
    time_s: TimestampS
    power_w: PowerW | None = None
    energy_j: TotalEnergyJ | None = Field(
        default=None, description="Monotonic energy counter since the agent started"
    )
    energy_source: EnergySource | None = None
    cpu_utilisation: Probability | None = None
    memory_used_bytes: ByteCount
    process_rss_bytes: ByteCount
    temperature_c: Celsius | None = None
    queue_depth: Count
    busy: bool
    loaded_experts: list[TopicLevel]
    plan_epoch: PlanEpoch | None = None
    plan_term: Term | None = Field(
        default=None, description="The leadership term of the plan it holds (None: none, or 0)"
    )
    jobs_done: Count
    jobs_failed: Count
    last_latency_s: DurationS | None = None
    slots_total: Count = Field(default=0, description="Jobs the loaded experts serve at once")
    slots_busy: Count = Field(default=0, description="Jobs running now")
    expert_slots_busy: dict[TopicLevel, Count] = Field(
        default_factory=dict, description="Jobs running now, per expert"
    )
