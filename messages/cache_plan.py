"""Which experts each agent keeps loaded, as decided by SlimCaching (``moe2 cache-plan``)."""

from __future__ import annotations

from pydantic import Field

from messages.base import DurationS, Message, TimestampS, TopicLevel


class CachePlan(Message):
    placement: dict[TopicLevel, list[TopicLevel]] = Field(
        description="agent_id -> expert ids it keeps loaded; empty: no cache plan in force"
    )
    expected_latency_s: DurationS | None = None
    algorithm: str
    time_s: TimestampS
