"""Tokens of a streamed generation: from an agent as they come, and relayed by the controller
for the expert that leads the ensemble."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from messages.base import Count, Message, TimestampS, TopicLevel


class StreamChunk(Message):
    """New text of one expert's generation for one request, in order (``seq`` from 0). QoS 0:
    a lost chunk is a gap in a preview, never in the answer, which follows as usual."""

    request_id: TopicLevel
    expert_id: TopicLevel
    agent_id: TopicLevel
    seq: Count
    text: str = Field(max_length=64_000, description="Text after the previous chunk's")
    done: bool = Field(default=False, description="The expert's last chunk")
    finish_reason: Literal["stop", "length", "deadline"] | None = None
    time_s: TimestampS
